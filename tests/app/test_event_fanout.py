"""An event re-reads what it names, once, and re-judges only the namespaces that list it."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from monitor.app.events import EventResult, handle_event
from monitor.app.poll import poll
from monitor.domain.documents import format_instant
from monitor.domain.scenario import parse_scenario
from monitor.entry.bootstrap import build_monitor
from monitor.entry.config import Settings
from monitor.formats.events import KeyVaultEvent, parse_event
from monitor.sandbox import Sandbox
from tests.builders import VAULT, key, namespace, ref, scenario

NOW = datetime(2026, 11, 22, tzinfo=UTC)
SHARED_BY = 40


def _event(kind: str, name: str | None) -> KeyVaultEvent:
    data: dict[str, Any] = {"VaultName": "kv-test", "ObjectType": "Key" if name else "Vault"}
    if name:
        data.update({"Id": f"{VAULT}/keys/{name}/0123456789abcdef0123456789abcdef", "ObjectName": name})
    event = parse_event(
        {
            "id": f"e-{kind}-{name}",
            "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-test",
            "subject": name or "kv-test",
            "eventType": f"Microsoft.KeyVault.{kind}",
            "eventTime": NOW.isoformat(),
            "data": data,
            "dataVersion": "1",
            "metadataVersion": "1",
        }
    )
    assert isinstance(event, KeyVaultEvent)
    return event


def _fleet() -> Any:
    namespaces = [namespace(f"sb-{n:02d}", ref("k-shared"), ref(f"k-own-{n:02d}")) for n in range(SHARED_BY)]
    namespaces.append(namespace("sb-apart", ref("k-apart")))
    keys = [key("k-shared"), key("k-apart"), *(key(f"k-own-{n:02d}") for n in range(SHARED_BY))]
    parsed, _ = parse_scenario(scenario(namespaces, keys, now=format_instant(NOW)))
    return parsed


def _run(tmp_path: Path, steps: Any) -> Any:
    async def run() -> Any:
        with Sandbox(_fleet()) as sandbox:
            environment = {**sandbox.environment(), "KEYHEALTH_SQLITE_PATH": str(tmp_path / "state.sqlite")}
            monitor = build_monitor(Settings.from_environment(environment))
            try:
                await poll(monitor, now=NOW)
                return await steps(sandbox, monitor)
            finally:
                assert monitor.close is not None
                await monitor.close()

    return asyncio.run(run())


def test_a_new_version_of_a_shared_key_is_one_read_for_all_its_namespaces(tmp_path: Path):
    """40 namespaces list k-shared (each with a key of its own too): the event reads k-shared once, re-judges
    those 40 and no other, and sees the new version's state (disabled: each drops to degraded)."""

    async def steps(sandbox: Sandbox, monitor: Any) -> tuple[EventResult, list[str]]:
        from monitor.domain.model import KeyVersion, NewVersion

        sandbox.apply(NewVersion(at=NOW, vault=VAULT, key="k-shared", version=KeyVersion("v2", NOW, enabled=False)))
        sandbox.requests.clear()
        result = await handle_event(monitor, _event("KeyNewVersionCreated", "k-shared"), now=NOW + timedelta(minutes=1))
        reads = [r.path for r in sandbox.requests.select(service="keyvault", status=200)]
        return result, reads

    result, reads = _run(tmp_path, steps)
    assert len(result.namespaces) == SHARED_BY and all("sb-apart" not in n for n in result.namespaces)
    key_requests = [r for r in reads if "/keys/" in r]
    assert key_requests and all("/keys/k-shared" in r for r in key_requests)  # no other key re-read
    assert len([r for r in key_requests if r.rstrip("/").endswith("/keys/k-shared")]) == 1  # once, for all 40
    assert result.report is not None
    assert {n.prediction.status_now.value for n in result.report.namespaces} == {"degraded"}


def test_an_access_policy_change_rereads_the_vault_not_its_keys(tmp_path: Path):
    async def steps(sandbox: Sandbox, monitor: Any) -> tuple[EventResult, int, int]:
        sandbox.requests.clear()
        result = await handle_event(monitor, _event("VaultAccessPolicyChanged", None), now=NOW + timedelta(minutes=1))
        return (
            result,
            sandbox.requests.count(service="keyvault"),
            len(sandbox.requests.select(service="arm", path="/providers/Microsoft.KeyVault/vaults")),
        )

    result, key_reads, vault_reads = _run(tmp_path, steps)
    assert len(result.namespaces) == SHARED_BY + 1 and key_reads == 0 and vault_reads >= 1
    assert result.report is not None
    assert {n.prediction.status_now.value for n in result.report.namespaces} == {"healthy"}


def test_a_shared_keys_events_move_each_namespaces_incidents_once(tmp_path: Path):
    """Past EVENT_INCIDENTS_READ_ONE_BY_ONE namespaces an event reads the incidents in one go, with the same
    outcome: the first event opens one incident per namespace, a second with nothing new sends nothing."""

    async def steps(sandbox: Sandbox, monitor: Any) -> tuple[EventResult, EventResult, int]:
        from monitor.domain.model import UpdateVersion

        sandbox.apply(UpdateVersion(at=NOW, vault=VAULT, key="k-shared", enabled=False))
        first = await handle_event(monitor, _event("KeyNewVersionCreated", "k-shared"), now=NOW + timedelta(minutes=1))
        again = _event("KeyNewVersionCreated", "k-shared")
        again = dataclasses.replace(again, id="e-again")
        second = await handle_event(monitor, again, now=NOW + timedelta(minutes=2))
        return first, second, len(await monitor.store.list_incidents(open_only=True))

    first, second, open_incidents = _run(tmp_path, steps)
    opened = {alert.namespace_id for alert in first.alerts}
    assert len(opened) == SHARED_BY and open_incidents >= SHARED_BY
    assert second.alerts == ()

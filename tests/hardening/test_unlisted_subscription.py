"""A subscription whose namespaces cannot be listed: the namespaces remembered from it become unknown, not
frozen at their last verdict, and the monitor-blind incident opens once; the rest of the fleet is unaffected."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from monitor.app.poll import poll
from monitor.entry.bootstrap import build_monitor
from monitor.entry.config import Settings
from monitor.sandbox import Sandbox
from tests.builders import key, namespace, ref, scenario
from tests.hardening.support import FAST_AZURE, parsed

SUB1 = "00000000-0000-0000-0000-000000000000"
SUB2 = "22222222-2222-2222-2222-222222222222"


def _monitor(sandbox: Sandbox, tmp_path: Path) -> Any:
    environment = {
        **sandbox.environment(),
        **FAST_AZURE,
        "KEYHEALTH_HTTP_RETRIES": "0",
        "KEYHEALTH_SQLITE_PATH": str(tmp_path / "state.sqlite"),
    }
    return build_monitor(Settings.from_environment(environment))


def test_namespaces_of_an_unlistable_subscription_are_unknown_until_it_can_be_listed(tmp_path: Path):
    """Listing subscription 1 fails (500) for two polls: sb-one is unknown with a monitor-blind finding naming
    the failure, its blind incident opens once and resolves when listing works again; sb-two stays healthy."""
    other = namespace("sb-two", ref("k2"))
    other["id"] = other["id"].replace(SUB1, SUB2)
    document = scenario([namespace("sb-one", ref("k1")), other], [key("k1"), key("k2")])

    async def run() -> list[dict[str, tuple[str, str]]]:
        seen = []
        async with Sandbox(parsed(document)) as sandbox:
            monitor = _monitor(sandbox, tmp_path)
            t0 = sandbox.clock.now()
            try:
                for step in range(4):
                    if step == 1:
                        path = f"/subscriptions/{SUB1}/providers/Microsoft.ServiceBus/namespaces$"
                        sandbox.faults.respond(500, service="arm", path=path)
                        # Resource Graph down too: otherwise it lists the subscription and nothing is unlisted.
                        sandbox.faults.respond(500, service="arm", path="/providers/Microsoft.ResourceGraph/resources")
                    if step == 3:
                        sandbox.faults.clear()
                    await poll(monitor, now=t0 + timedelta(minutes=5 * step))
                    states = await monitor.store.list_namespace_states()
                    incidents = {i.condition: i.open for i in await monitor.store.list_incidents()}
                    seen.append(
                        {
                            s.name or "": (
                                s.document["status_now"],
                                " ".join(f["message"] for f in s.document["findings"] if f["code"] == "monitor-blind"),
                            )
                            for s in states
                        }
                        | {"blind incident": ("open" if incidents.get("blind") else "closed", "")}
                    )
            finally:
                assert monitor.close is not None
                await monitor.close()
        return seen

    before, first, second, after = asyncio.run(run())
    assert before["sb-one"][0] == before["sb-two"][0] == "healthy"
    for during in (first, second):
        status, blind = during["sb-one"]
        assert status == "unknown", during
        assert f"the namespaces of subscription {SUB1} could not be listed: HTTP 500" in blind
        assert during["sb-two"] == ("healthy", "")
        assert during["blind incident"][0] == "open"
    assert after["sb-one"] == after["sb-two"] == ("healthy", "")
    assert after["blind incident"][0] == "closed"


def test_an_event_during_the_outage_does_not_bring_back_a_verdict(tmp_path: Path):
    """While subscription 1 cannot be listed, an event for sb-one's key re-reads the key (readable, healthy) but
    sb-one stays unknown: its key list itself is what could not be read."""
    from monitor.app.events import handle_event
    from monitor.formats.events import KeyVaultEvent, parse_event
    from tests.builders import VAULT

    other = namespace("sb-two", ref("k2"))  # in the same vault, from a subscription still listed: the vault is read
    other["id"] = other["id"].replace(SUB1, SUB2)
    document = scenario([namespace("sb-one", ref("k1")), other], [key("k1"), key("k2")])

    async def run() -> str:
        async with Sandbox(parsed(document)) as sandbox:
            monitor = _monitor(sandbox, tmp_path)
            t0 = sandbox.clock.now()
            try:
                await poll(monitor, now=t0)
                sandbox.faults.respond(500, service="arm", path=f"/subscriptions/{SUB1}/providers/Microsoft.ServiceBus")
                sandbox.faults.respond(500, service="arm", path="/providers/Microsoft.ResourceGraph/resources")
                await poll(monitor, now=t0 + timedelta(minutes=5))
                event = parse_event(
                    {
                        "id": "e-outage",
                        "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-test",
                        "subject": "k1",
                        "eventType": "Microsoft.KeyVault.KeyNewVersionCreated",
                        "eventTime": t0.isoformat(),
                        "data": {
                            "Id": f"{VAULT}/keys/k1/0123456789abcdef0123456789abcdef",
                            "VaultName": "kv-test",
                            "ObjectType": "Key",
                            "ObjectName": "k1",
                        },
                        "dataVersion": "1",
                        "metadataVersion": "1",
                    }
                )
                assert isinstance(event, KeyVaultEvent)
                result = await handle_event(monitor, event, now=t0 + timedelta(minutes=6))
                assert result.report is not None
                (judged,) = result.report.namespaces
                return judged.prediction.status_now.value
            finally:
                assert monitor.close is not None
                await monitor.close()

    assert asyncio.run(run()) == "unknown"

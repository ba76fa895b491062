"""Remediation against the stand-in: real SDK writes over HTTPS, its request log as the witness."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.keyvault.keys._shared import http_challenge_cache

from monitor.app.events import handle_event
from monitor.app.monitor import Monitor
from monitor.app.poll import poll, remediate_once
from monitor.domain.documents import format_instant
from monitor.domain.errors import RemediationError
from monitor.domain.scenario import parse_scenario
from monitor.entry.bootstrap import build_monitor
from monitor.entry.config import Settings
from monitor.formats.events import KeyVaultEvent, parse_event
from monitor.formats.render import namespace_document
from monitor.sandbox import Sandbox
from tests.builders import VAULT, key, namespace, ref, scenario, version

NOW = datetime(2026, 11, 22, tzinfo=UTC)
SOON = NOW + timedelta(days=3)
ALLOWED = {"KEYHEALTH_REMEDIATION": "on", "KEYHEALTH_REMEDIATION_KEYS": f"{VAULT}/keys/k-rot, {VAULT}/keys/k-del"}


@pytest.fixture(autouse=True)
def clear_challenge_cache() -> Iterator[None]:
    http_challenge_cache.clear()
    yield
    http_challenge_cache.clear()


def _fleet(rotation_policy: dict[str, Any] | None = None) -> Any:
    document = scenario(
        [
            namespace("sb-vless", ref("k-rot")),
            namespace("sb-pinned", ref("k-rot", version_id="v1")),
            namespace("sb-del", ref("k-del")),
            namespace("sb-other", ref("k-other")),
        ],
        [
            key(
                "k-rot",
                version(
                    "v1",
                    created="2026-01-01T00:00:00Z",
                    exp=format_instant(SOON),
                    kty="RSA",
                    key_size=2048,
                    key_ops=["wrapKey", "unwrapKey"],
                ),
                rotation_policy=rotation_policy,
            ),
            key("k-del", deleted=True),
            key("k-other", version("v1", exp=format_instant(SOON))),
        ],
        now=format_instant(NOW),
    )
    parsed, _ = parse_scenario(document)
    return parsed


def _writes(sandbox: Sandbox, path: str | None = None) -> list[str]:
    return [
        f"{r.method} {r.path}"
        for r in sandbox.requests.records
        # A Resource Graph query is a POST that reads.
        if r.method not in {"GET", "HEAD"}
        and "/Microsoft.ResourceGraph/" not in r.path
        and (path is None or path in r.path)
    ]


class Running:
    def __init__(self, sandbox: Sandbox, tmp_path: Path, settings: dict[str, str]) -> None:
        self.sandbox = sandbox
        self.environment = {
            **sandbox.environment(),
            "KEYHEALTH_SQLITE_PATH": str(tmp_path / "state.sqlite"),
            **settings,
        }
        self.monitors: list[Monitor] = []

    def monitor(self) -> Monitor:
        built = build_monitor(Settings.from_environment(self.environment))
        self.monitors.append(built)
        return built

    async def close(self) -> None:
        for built in self.monitors:
            assert built.close is not None
            await built.close()


def _run(tmp_path: Path, settings: dict[str, str], body: Any, rotation_policy: dict[str, Any] | None = None) -> Any:
    async def main() -> Any:
        with Sandbox(_fleet(rotation_policy)) as sandbox:
            running = Running(sandbox, tmp_path, settings)
            try:
                return await body(running)
            finally:
                await running.close()

    return asyncio.run(main())


def _document(result: Any, name: str) -> dict[str, Any]:
    return next(namespace_document(n) for n in result.report.namespaces if n.prediction.namespace.name == name)


def test_an_expiring_key_is_rotated_once_and_versionless_namespaces_recover(tmp_path: Path, emitted):
    """Rotated by the first poll (create: no rotation policy); not again by the next poll or a triple event."""
    rotations_before = emitted.value("keyhealth.remediation.actions", action="rotate", outcome="done")

    async def body(running: Running) -> Any:
        monitor, sandbox = running.monitor(), running.sandbox
        first = await poll(monitor, now=NOW)
        creates_after_first = _writes(sandbox, "/keys/k-rot/create")
        later = NOW + timedelta(minutes=5)
        sandbox.clock.set(later)
        second = await poll(monitor, now=later)
        event = parse_event(
            {
                "id": "near-expiry-1",
                "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-test",
                "subject": "k-rot",
                "eventType": "Microsoft.KeyVault.KeyNearExpiry",
                "eventTime": later.isoformat(),
                "data": {
                    "Id": f"{VAULT}/keys/k-rot/0123456789abcdef0123456789abcdef",
                    "VaultName": "kv-test",
                    "ObjectType": "Key",
                    "ObjectName": "k-rot",
                    "Version": "0123456789abcdef0123456789abcdef",
                },
                "dataVersion": "1",
                "metadataVersion": "1",
            }
        )
        assert isinstance(event, KeyVaultEvent)
        for _ in range(3):
            await handle_event(monitor, event, now=later)
        return first, second, creates_after_first, _writes(sandbox, "/keys/k-rot/create")

    first, second, creates_after_first, creates = _run(tmp_path, ALLOWED, body)
    done = {o.proposal.target: o for o in first.remediation if o.status == "done"}
    assert set(done) == {"kv-test/k-rot", "kv-test/k-del"}
    assert (
        "new version" in done["kv-test/k-rot"].detail
        and "(expires 2027-11-22T00:00:00Z)" in done["kv-test/k-rot"].detail
    )
    assert len(creates_after_first) == 1 and creates == creates_after_first  # once, whatever came after
    rotations = emitted.value("keyhealth.remediation.actions", action="rotate", outcome="done") - rotations_before
    assert rotations == 1  # the metric counts it too
    assert [o.proposal.target for o in second.remediation if o.proposal.action.value == "rotate"] == ["kv-test/k-other"]
    assert _document(second, "sb-vless")["status_now"] == "healthy"
    # The new version lasts the configured year: the next revocation is a year out, not in 3 days.
    assert _document(second, "sb-vless")["revoked_at_earliest"] == "2027-11-22T00:00:00Z"
    pinned = _document(second, "sb-pinned")
    assert "version-pinned" in {f["code"] for f in pinned["findings"]}  # still on v1, which still expires
    assert pinned["revoked_at_earliest"] == format_instant(SOON)


def test_a_soft_deleted_key_is_recovered_and_the_revocation_disappears(tmp_path: Path):
    async def body(running: Running) -> Any:
        monitor = running.monitor()
        before = await poll(monitor, now=NOW)
        after = await poll(monitor, now=NOW + timedelta(minutes=5))
        return before, after, _writes(running.sandbox, "/deletedkeys/k-del/recover")

    before, after, recovers = _run(tmp_path, ALLOWED, body)
    assert _document(before, "sb-del")["status_now"] == "revoked"
    (recovered,) = [o for o in before.remediation if o.proposal.action.value == "recover"]
    assert recovered.status == "done" and recovered.detail.startswith("recovered kv-test/k-del; sb-del picks it up by")
    assert len(recovers) == 1
    assert _document(after, "sb-del")["status_now"] == "healthy"
    assert _document(after, "sb-del")["revoked_at_earliest"] is None


def test_unpin_happens_only_with_its_own_opt_in(tmp_path: Path):
    """With unpin enabled and the namespace allowed, sb-pinned is made versionless and then healthy."""
    settings = {
        **ALLOWED,
        "KEYHEALTH_REMEDIATION_ACTIONS": "rotate,recover,unpin",
        "KEYHEALTH_REMEDIATION_NAMESPACES": "sb-pin*",
    }

    async def body(running: Running) -> Any:
        monitor = running.monitor()
        first = await poll(monitor, now=NOW)
        after = await poll(monitor, now=NOW + timedelta(minutes=5))
        assert after.report is not None
        namespace_doc = running.sandbox.namespace(
            next(
                n.prediction.namespace.id for n in after.report.namespaces if n.prediction.namespace.name == "sb-pinned"
            )
        )
        return first, after, namespace_doc

    first, after, namespace_doc = _run(tmp_path, settings, body)
    (unpinned,) = [o for o in first.remediation if o.proposal.action.value == "unpin"]
    assert unpinned.status == "done" and "unpinned sb-pinned from version v1 of kv-test/k-rot" in unpinned.detail
    assert namespace_doc is not None
    assert namespace_doc["properties"]["encryption"]["keyVaultProperties"][0]["keyVersion"] == ""
    pinned = _document(after, "sb-pinned")
    assert pinned["status_now"] == "healthy" and "version-pinned" not in {f["code"] for f in pinned["findings"]}


def test_without_opt_in_unpin_is_blocked_and_says_why(tmp_path: Path):
    async def body(running: Running) -> Any:
        return await poll(running.monitor(), now=NOW)

    result = _run(tmp_path, ALLOWED, body)
    (unpin,) = [o for o in result.remediation if o.proposal.action.value == "unpin"]
    assert (unpin.status, unpin.detail) == ("blocked", "unpin is not enabled (KEYHEALTH_REMEDIATION_ACTIONS)")


def test_off_by_default_nothing_is_written_and_the_plan_says_why(tmp_path: Path):
    """The default: the poll plans nothing and writes nothing; `remediate` shows the plan with the reason."""

    async def body(running: Running) -> Any:
        monitor = running.monitor()
        polled = await poll(monitor, now=NOW)
        _, outcomes = await remediate_once(monitor, now=NOW, dry_run=False)
        return polled, outcomes, _writes(running.sandbox)

    polled, outcomes, writes = _run(tmp_path, {}, body)
    assert polled.remediation == () and writes == []
    assert {o.status for o in outcomes} == {"blocked"}
    assert {o.detail for o in outcomes} == {"remediation is off (KEYHEALTH_REMEDIATION=off)"}
    assert {o.proposal.target for o in outcomes} == {
        "kv-test/k-rot",
        "kv-test/k-del",
        "kv-test/k-other",
        "sb-pinned (kv-test/k-rot)",
    }


def test_a_key_outside_the_allow_list_is_not_touched(tmp_path: Path):
    async def body(running: Running) -> Any:
        result = await poll(running.monitor(), now=NOW)
        return result, _writes(running.sandbox, "k-other")

    result, writes = _run(tmp_path, ALLOWED, body)
    (other,) = [o for o in result.remediation if o.proposal.target == "kv-test/k-other"]
    assert (other.status, other.detail) == ("blocked", f"key {VAULT}/keys/k-other is not in KEYHEALTH_REMEDIATION_KEYS")
    assert writes == []


@pytest.mark.parametrize(
    "allowed",
    [
        f"{VAULT}/keys/k-rot",  # another key of the same vault
        "https://kv-test.vault.azure.cn/keys/*",  # the same vault name in another cloud
        "https://kv-test.managedhsm.azure.net/keys/*",  # a Managed HSM of the same name
    ],
)
def test_a_soft_deleted_key_is_recovered_only_when_its_own_vault_host_allow_lists_it(tmp_path: Path, allowed: str):
    """Recover is gated like rotate: k-del is soft-deleted and a namespace lists it, but no pattern pins its host
    and name, so nothing is recovered."""

    async def body(running: Running) -> Any:
        result = await poll(running.monitor(), now=NOW)
        return result, _writes(running.sandbox, "/deletedkeys/")

    result, recovers = _run(tmp_path, {"KEYHEALTH_REMEDIATION": "on", "KEYHEALTH_REMEDIATION_KEYS": allowed}, body)
    (recover,) = [o for o in result.remediation if o.proposal.action.value == "recover"]
    assert (recover.status, recover.detail) == (
        "blocked",
        f"key {VAULT}/keys/k-del is not in KEYHEALTH_REMEDIATION_KEYS",
    )
    assert recovers == []
    assert _document(result, "sb-del")["status_now"] == "revoked"


def test_the_azure_remediator_itself_refuses_keys_off_the_allow_list(tmp_path: Path):
    """A key write that bypasses the plan is refused before any request: the adapter holds the allow-list too."""

    async def body(running: Running) -> Any:
        monitor = running.monitor()
        assert monitor.remediation is not None
        with pytest.raises(RemediationError) as raised:
            await monitor.remediation.remediator.recover_key(VAULT, "k-other")
        with pytest.raises(RemediationError):
            await monitor.remediation.remediator.rotate_key("https://kv-test.vault.azure.cn", "k-rot")
        return raised.value, _writes(running.sandbox)

    refused, writes = _run(tmp_path, ALLOWED, body)
    assert refused.reason == "the key is not in KEYHEALTH_REMEDIATION_KEYS" and not refused.denied
    assert writes == []


def test_a_dry_run_writes_nothing_and_tells_people_once_a_day(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """Every poll plans "would rotate"; the alert about it goes out once a day, not every 5 minutes."""

    async def body(running: Running) -> Any:
        monitor = running.monitor()
        first = await poll(monitor, now=NOW)
        told_first = caplog.text.count("keyhealth remediation dry-run: [DRY RUN] would rotate kv-test/k-rot")
        second = await poll(monitor, now=NOW + timedelta(minutes=5))
        told_both = caplog.text.count("keyhealth remediation dry-run: [DRY RUN] would rotate kv-test/k-rot")
        next_day = await poll(monitor, now=NOW + timedelta(days=1, minutes=5))
        told_all = caplog.text.count("keyhealth remediation dry-run: [DRY RUN] would rotate kv-test/k-rot")
        return first, second, next_day, (told_first, told_both, told_all), _writes(running.sandbox)

    with caplog.at_level(logging.WARNING, logger="keyhealth.alerts"):
        first, second, next_day, told, writes = _run(tmp_path, {**ALLOWED, "KEYHEALTH_REMEDIATION": "dry-run"}, body)
    assert writes == []
    for result in (first, second, next_day):
        (rotate,) = [o for o in result.remediation if o.proposal.target == "kv-test/k-rot"]
        assert rotate.status == "dry-run" and rotate.detail.startswith("would rotate kv-test/k-rot (its current")
    assert told == (1, 1, 2)


def test_two_concurrent_remediations_rotate_once(tmp_path: Path):
    async def body(running: Running) -> Any:
        one, two = running.monitor(), running.monitor()
        results = await asyncio.gather(
            remediate_once(one, now=NOW, dry_run=False, namespaces=["sb-vless"]),
            remediate_once(two, now=NOW, dry_run=False, namespaces=["sb-vless"]),
        )
        return [o for _, outcomes in results for o in outcomes], _writes(running.sandbox, "/keys/k-rot/")

    outcomes, writes = _run(tmp_path, ALLOWED, body)
    assert len([w for w in writes if w.endswith("/create")]) == 1
    assert sorted(o.status for o in outcomes) == ["done", "skipped"]
    skipped = next(o for o in outcomes if o.status == "skipped")
    assert skipped.detail in {"another instance is acting on it"} or skipped.detail.startswith("already rotated")


def test_a_denied_rotation_alerts_clearly_and_is_not_retried_in_a_storm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """403 on create: a failed outcome naming the missing permission, an alert, and a cooldown."""

    async def body(running: Running) -> Any:
        sandbox = running.sandbox
        sandbox.faults.respond(403, code="Forbidden", service="keyvault", method="POST", path="/keys/k-rot/create")
        monitor = running.monitor()
        first = await poll(monitor, now=NOW)
        second = await poll(monitor, now=NOW + timedelta(minutes=5))
        third = await poll(monitor, now=NOW + timedelta(minutes=10))
        queued = await monitor.store.list_outbox()
        return first, second, third, _writes(sandbox, "/keys/k-rot/create"), queued

    with caplog.at_level(logging.WARNING, logger="keyhealth.alerts"):
        first, second, third, creates, queued = _run(tmp_path, ALLOWED, body)
    assert caplog.text.count("keyhealth remediation failed: [ACTION FAILED] could not rotate kv-test/k-rot") == 1
    (failed,) = [o for o in first.remediation if o.proposal.target == "kv-test/k-rot"]
    assert failed.status == "failed"
    assert "HTTP 403" in failed.detail and "Key Vault Crypto Officer" in failed.detail
    for later in (second, third):
        (again,) = [o for o in later.remediation if o.proposal.target == "kv-test/k-rot"]
        assert again.status == "skipped" and again.detail.startswith("cooling down after a failure until")
    assert len(creates) == 1
    assert queued == []  # no sinks configured: the log sink carried the alert


def test_a_rotation_policy_that_rotates_first_is_left_to_key_vault(tmp_path: Path):
    """The policy rotates one day before expiry, which is still ahead: keyhealth does not compete."""
    policy = {"lifetimeActions": [{"trigger": {"timeBeforeExpiry": "P1D"}, "action": {"type": "Rotate"}}]}

    async def body(running: Running) -> Any:
        return await poll(running.monitor(), now=NOW), _writes(running.sandbox, "/keys/k-rot/")

    result, writes = _run(tmp_path, ALLOWED, body, rotation_policy=policy)
    (rotate,) = [o for o in result.remediation if o.proposal.target == "kv-test/k-rot"]
    assert rotate.status == "skipped"
    assert rotate.detail.startswith("Key Vault's rotation policy rotates it at 2026-11-24T00:00:00Z, before it expires")
    assert writes == []


def test_a_policy_that_should_have_rotated_is_helped_with_key_vaults_own_rotate(tmp_path: Path):
    """The policy's trigger (7 days before expiry) has passed without a rotation: keyhealth calls rotate, and the
    policy's expiryTime gives the new version its lifetime."""
    policy = {
        "lifetimeActions": [{"trigger": {"timeBeforeExpiry": "P7D"}, "action": {"type": "Rotate"}}],
        "attributes": {"expiryTime": "P90D"},
    }

    async def body(running: Running) -> Any:
        return await poll(running.monitor(), now=NOW), _writes(running.sandbox, "/keys/k-rot/")

    result, writes = _run(tmp_path, ALLOWED, body, rotation_policy=policy)
    (rotate,) = [o for o in result.remediation if o.proposal.target == "kv-test/k-rot"]
    assert rotate.status == "done" and "(expires 2027-02-20T00:00:00Z)" in rotate.detail
    assert writes == ["POST /keys/k-rot/rotate"]


def test_the_remediate_command_shows_the_plan_and_writes_nothing_on_a_dry_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import io

    from monitor.entry.cli import main

    with Sandbox(_fleet(), clock_start=datetime.now(UTC)) as sandbox:
        for name, value in {**sandbox.environment(), **ALLOWED}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("KEYHEALTH_SQLITE_PATH", str(tmp_path / "state.sqlite"))
        out, err = io.StringIO(), io.StringIO()
        status = main(["remediate", "--dry-run", "--namespace", "sb-del"], stdout=out, stderr=err)
        writes = _writes(sandbox)
    assert (status, err.getvalue(), writes) == (0, "", [])
    lines = out.getvalue().splitlines()
    assert "mode dry run (--dry-run): 4 namespaces read" in lines[0]
    assert lines[1:] == [
        "- recover kv-test/k-del [dry-run]",
        "    why: it is soft-deleted; 1 namespace lists it; namespaces: sb-del",
        "    would recover kv-test/k-del (it is soft-deleted; 1 namespace lists it)",
    ]

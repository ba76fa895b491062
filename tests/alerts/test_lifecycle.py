"""Acceptance: warning -> critical -> revoked -> recovered pages each sink exactly open, escalate, escalate,
resolve; also with every Key Vault event delivered three times, and with a restart between steps.

The whole path is real: the stand-in serves the fleet over HTTPS to the Azure SDKs, the state is a
SQLite file, and every sink posts to its own HTTPS receiver.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.keyvault.keys._shared import http_challenge_cache

from monitor.app.events import EventOutcome, handle_event
from monitor.app.monitor import Monitor
from monitor.app.poll import deliver_alerts, poll
from monitor.domain.documents import format_instant
from monitor.domain.model import KeyVersion, NewVersion
from monitor.domain.scenario import parse_scenario
from monitor.entry.bootstrap import build_monitor
from monitor.entry.config import Settings
from monitor.formats.events import parse_event
from monitor.sandbox import Sandbox
from tests.alerts.receiver import AlertReceiver
from tests.builders import key, namespace, ref, scenario, vault, version

OTHER = "https://kv-other.vault.azure.net"
VAULT = "https://kv-test.vault.azure.net"
EXPIRY = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
STEPS = {
    "quiet": EXPIRY - timedelta(days=40),
    "warning": EXPIRY - timedelta(days=20),
    "critical": EXPIRY - timedelta(days=5),
    "revoked": EXPIRY + timedelta(minutes=10),
    "recovered": EXPIRY + timedelta(minutes=20),
}
ROUTING_KEY = "PDROUTINGKEY00000000000000000001"


@pytest.fixture(autouse=True)
def clear_challenge_cache() -> Iterator[None]:
    http_challenge_cache.clear()
    yield
    http_challenge_cache.clear()


def _fleet() -> Any:
    document = scenario(
        [namespace("sb-pay", ref("k1"), ref("k2", vault_uri=OTHER), tags={"owner": "payments"})],
        [
            key("k1", version("v1", exp=format_instant(EXPIRY))),
            key("k2", version("v1", exp=format_instant(EXPIRY)), vault_uri=OTHER),
        ],
        vaults=[vault(), vault(OTHER)],
        now=format_instant(STEPS["quiet"]),
    )
    parsed, _ = parse_scenario(document)
    return parsed


def _environment(sandbox: Sandbox, state: Path, hooks: dict[str, AlertReceiver], ca_bundle: str) -> dict[str, str]:
    alerts: dict[str, Any] = {
        "sinks": {
            "ops-webhook": {"type": "webhook", "url_setting": "OPS_HOOK_URL", "secret_setting": "OPS_HOOK_SECRET"},
            "payments-teams": {"type": "teams", "url_setting": "PAYMENTS_TEAMS_URL"},
            "payments-slack": {"type": "slack", "url_setting": "PAYMENTS_SLACK_URL"},
            "payments-pager": {
                "type": "pagerduty",
                "routing_key_setting": "PAYMENTS_PD_KEY",
                "url": hooks["pagerduty"].url("/v2/enqueue"),
            },
            "automation": {
                "type": "eventgrid",
                "endpoint": hooks["eventgrid"].url("/api/events"),
                "key_setting": "EG_KEY",
            },
        },
        # The key's owner hears through their channels; every sb-* namespace also reaches ops and automation.
        "routes": [
            {"tags": {"owner": "payments"}, "sinks": ["payments-teams", "payments-slack", "payments-pager"]},
            {"namespaces": ["sb-*"], "sinks": ["ops-webhook", "automation"]},
        ],
        "default": ["ops-webhook"],
    }
    return {
        **sandbox.environment(),
        "KEYHEALTH_SQLITE_PATH": str(state),
        "KEYHEALTH_ALERTS": json.dumps(alerts),
        "OPS_HOOK_URL": hooks["webhook"].url("/hooks/keyhealth"),
        "OPS_HOOK_SECRET": "hook-secret",
        "PAYMENTS_TEAMS_URL": hooks["teams"].url("/workflows/payments"),
        "PAYMENTS_SLACK_URL": hooks["slack"].url("/services/T0/B0/token"),
        "PAYMENTS_PD_KEY": ROUTING_KEY,
        "EG_KEY": "eg-key",
        "KEYHEALTH_CA_BUNDLE": _both(sandbox.ca_path, Path(ca_bundle), state.parent / "trusted.pem"),
    }


def _both(first: Path, second: Path, bundle: Path) -> str:
    """One PEM bundle trusting the stand-in's CA and the receivers' CA."""
    bundle.write_text(first.read_text() + second.read_text())
    return str(bundle)


def _near_expiry_event(name: str, vault_uri: str, at: datetime) -> Any:
    host = vault_uri.removeprefix("https://")
    return parse_event(
        {
            "id": f"near-expiry-{name}-{at.isoformat()}",
            "topic": f"/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{host.split('.')[0]}",
            "subject": name,
            "eventType": "Microsoft.KeyVault.KeyNearExpiry",
            "eventTime": at.isoformat(),
            "data": {
                "Id": f"{vault_uri}/keys/{name}/0123456789abcdef0123456789abcdef",
                "VaultName": host.split(".")[0],
                "ObjectType": "Key",
                "ObjectName": name,
                "Version": "0123456789abcdef0123456789abcdef",
            },
            "dataVersion": "1",
            "metadataVersion": "1",
        }
    )


def _run_lifecycle(
    mode: str,
    tmp_path: Path,
    receivers: Callable[..., AlertReceiver],
    ca_bundle: str,
    store: dict[str, str] | None = None,
) -> dict[str, AlertReceiver]:
    hooks = {
        "webhook": receivers(),
        "teams": receivers(status=202),
        "slack": receivers(reply="ok"),
        "pagerduty": receivers(status=202, reply='{"status":"success"}'),
        "eventgrid": receivers(),
    }

    async def scenario_run() -> None:
        with Sandbox(_fleet()) as sandbox:
            environment = {**_environment(sandbox, tmp_path / "state.sqlite", hooks, ca_bundle), **(store or {})}
            settings = Settings.from_environment(environment)
            monitor: Monitor = build_monitor(settings)
            try:
                for step, at in STEPS.items():
                    sandbox.clock.set(at)
                    if step == "recovered":  # both keys rotated after the outage began
                        for vault_uri, name in ((VAULT, "k1"), (OTHER, "k2")):
                            rotated = KeyVersion(
                                version="v2", created=at - timedelta(minutes=5), exp=at + timedelta(days=365)
                            )
                            sandbox.apply(
                                NewVersion(at=at - timedelta(minutes=5), vault=vault_uri, key=name, version=rotated)
                            )
                    if mode == "restart":  # a new process: nothing in memory survives, only the store
                        assert monitor.close is not None
                        await monitor.close()
                        http_challenge_cache.clear()
                        monitor = build_monitor(settings)
                    result = await poll(monitor, now=at)
                    assert result.ran
                    if mode == "duplicate-events":
                        event = _near_expiry_event("k1", VAULT, at)
                        outcomes = [
                            (await handle_event(monitor, event, now=at + timedelta(seconds=delivery + 1))).outcome
                            for delivery in range(3)
                        ]
                        assert outcomes == [EventOutcome.EVALUATED, EventOutcome.DUPLICATE, EventOutcome.DUPLICATE]
                    report = await deliver_alerts(monitor, now=at + timedelta(seconds=5))
                    assert report.ran and report.retried == 0 and report.abandoned == 0
            finally:
                assert monitor.close is not None
                await monitor.close()

    asyncio.run(scenario_run())
    return hooks


@pytest.mark.parametrize(
    ("mode", "store_kind"),
    [("plain", "sqlite"), ("duplicate-events", "sqlite"), ("restart", "sqlite"), ("restart", "tables")],
)
def test_each_sink_gets_one_open_two_escalations_and_one_resolve(
    mode: str, store_kind: str, tmp_path: Path, receivers, ca_bundle, request: pytest.FixtureRequest
):
    """The revocation incident of sb-pay, as each sink sees it, whatever the delivery or process history,
    with incidents and the outbox in either store."""
    store = None
    if store_kind == "tables":
        azurite = request.getfixturevalue("azurite")
        store = {
            "KEYHEALTH_STATE_STORE": "tables",
            "KEYHEALTH_TABLES_CONNECTION_STRING": azurite.connection_string,
            "KEYHEALTH_TABLE_PREFIX": f"t{uuid.uuid4().hex[:16]}",
        }
    hooks = _run_lifecycle(mode, tmp_path, receivers, ca_bundle, store)

    webhook = [h.body for h in hooks["webhook"].hits]
    assert [(b["notice"], b["level"], b["previous_level"]) for b in webhook] == [
        ("open", "warning", None),
        ("escalate", "critical", "warning"),
        ("escalate", "revoked", "critical"),
        ("resolve", "revoked", "revoked"),
    ]
    assert {b["condition"] for b in webhook} == {"revocation"}

    teams = [h.body["attachments"][0]["content"]["body"][0]["text"] for h in hooks["teams"].hits]
    slack = [h.body["text"] for h in hooks["slack"].hits]
    for headlines in (teams, slack):
        assert [h.split(" sb-pay")[0] for h in headlines] == [
            "[WARNING]",
            "[CRITICAL] (was warning)",
            "[REVOKED] (was critical)",
            "[RESOLVED]",
        ]

    pager = [h.body for h in hooks["pagerduty"].hits]
    assert [p["event_action"] for p in pager] == ["trigger", "trigger", "trigger", "resolve"]
    assert [p["payload"]["severity"] for p in pager[:3]] == ["warning", "critical", "critical"]
    assert len({p["dedup_key"] for p in pager}) == 1

    events = [h.body[0]["type"] for h in hooks["eventgrid"].hits]
    assert events == [
        "KeyHealth.NamespaceAtRisk",
        "KeyHealth.NamespaceAtRisk",
        "KeyHealth.NamespaceRevoked",
        "KeyHealth.NamespaceRecovered",
    ]
    # Every notice went to every sink once: the same alert ids, in the same order.
    ids = [b["id"] for b in webhook]
    assert len(set(ids)) == 4 and [h.body[0]["id"] for h in hooks["eventgrid"].hits] == ids


def test_the_warning_page_says_when_why_and_what_to_do(tmp_path: Path, receivers, ca_bundle):
    """The first page names the window in UTC and relative, the keys, the redundancy, and the rotate commands."""
    hooks = _run_lifecycle("plain", tmp_path, receivers, ca_bundle)
    first = hooks["webhook"].hits[0].body
    assert first["revoked_at_earliest"] == "2027-03-01T12:00:00Z"
    assert first["window"] == "2027-03-01T12:00:00Z … 2027-03-01T12:05:00Z (in 19 days 23 hours)"
    assert first["usable_keys_now"] == 2 and first["keys_total"] == 2
    messages = " ".join(f["message"] for f in first["findings"])
    assert "az keyvault key rotate --vault-name kv-test --name k1" in messages
    assert "az keyvault key rotate --vault-name kv-other --name k2" in messages
    assert first["namespace"]["tags"] == {"owner": "payments"}

"""The service's own key accesses read live: `check` with KEYHEALTH_AUDIT_LOGS=on finds each vault's diagnostic
settings and workspace over ARM and queries the Logs API (azure-monitor-query's LogsQueryClient) of the
stand-in, whose Service Bus polls each namespace's keys at its own phase through the stand-in's Key Vault. What
it could not observe is `unknown`, never a verdict."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.keyvault.keys._shared import http_challenge_cache

from monitor.domain.documents import format_instant
from monitor.domain.model import SetNetwork, UpdateVersion
from monitor.sandbox import Sandbox
from monitor.sandbox.servicebus_polls import phase_of
from tests.builders import ALL_NEEDED, VAULT, Run, codes, key, namespace, ref, run_cli, scenario, vault, version
from tests.hardening.support import parsed

OTHER_VAULT = "https://kv-other.vault.azure.net"
SB_A = "00000000-0000-0000-0000-0000000000a1"
SB_B = "00000000-0000-0000-0000-0000000000b1"
SB_EXPIRING = "00000000-0000-0000-0000-0000000000c1"
START = datetime(2026, 11, 22, tzinfo=UTC)
EXPIRY = START + timedelta(hours=1, seconds=7)


def _fleet() -> dict[str, Any]:
    return scenario(
        [
            namespace("sb-a", ref("k1"), ref("k2"), principal=SB_A),
            namespace("sb-b", ref("k3", vault_uri=OTHER_VAULT), principal=SB_B),
            namespace("sb-expiring", ref("k4"), principal=SB_EXPIRING),
        ],
        [
            key("k1"),
            key("k2"),
            key("k3", vault_uri=OTHER_VAULT),
            key("k4", version("v4", exp=format_instant(EXPIRY))),
        ],
        vaults=[
            vault(VAULT, access={SB_A: ALL_NEEDED, SB_EXPIRING: ALL_NEEDED}),
            vault(OTHER_VAULT, access={SB_B: ALL_NEEDED}),
        ],
    )


@pytest.fixture(autouse=True)
def clear_challenge_cache() -> Iterator[None]:
    http_challenge_cache.clear()
    yield
    http_challenge_cache.clear()


def _sandbox(monkeypatch: pytest.MonkeyPatch, **options: Any) -> Iterator[Sandbox]:
    with Sandbox(parsed(_fleet()), **options) as running:
        for name, value in running.environment().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("KEYHEALTH_HTTP_RETRIES", "0")
        monkeypatch.setenv("KEYHEALTH_AUDIT_LOGS", "on")
        yield running


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    yield from _sandbox(monkeypatch)


@pytest.fixture
def fresh_sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """No history before the clock's start: the service's first poll is still to come."""
    yield from _sandbox(monkeypatch, audit_history=timedelta(0))


def _check(sandbox: Sandbox) -> Run:
    run = run_cli("check", "--format", "json", "--at", format_instant(sandbox.clock.now()))
    assert run.status in (0, 3), run.stderr
    return run


def _namespace_id(sandbox: Sandbox, name: str) -> str:
    return next(str(d["id"]) for d in sandbox.state.namespaces() if d["name"] == name)


def test_the_phase_of_every_namespace_is_learnt_within_three_polls(fresh_sandbox: Sandbox):
    learnt: dict[str, int] = {}
    for poll in range(1, 4):
        fresh_sandbox.clock.advance(timedelta(minutes=5))
        for item in _check(fresh_sandbox).json["namespaces"]:
            if item["observed"].get("phase_known") and item["name"] not in learnt:
                learnt[item["name"]] = poll
                phase = phase_of(_namespace_id(fresh_sandbox, item["name"]))
                assert item["observed"]["phase_seconds"] == pytest.approx(phase, abs=0.001), item["name"]
    assert set(learnt) == {"sb-a", "sb-b", "sb-expiring"}
    assert max(learnt.values()) <= 3


def test_a_revocation_is_predicted_to_the_second_of_the_stand_ins_own_poll(sandbox: Sandbox):
    expiring = next(n for n in _check(sandbox).json["namespaces"] if n["name"] == "sb-expiring")
    assert expiring["revoked_at_earliest"] is not None and expiring["revoked_by"] is not None
    revoked_at = datetime.fromisoformat(expiring["revoked_at"].replace("Z", "+00:00"))
    # The stand-in's poll at that instant is the first to fail, and the one before it served.
    phase = phase_of(_namespace_id(sandbox, "sb-expiring"))
    assert ((revoked_at - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() - phase) % 300 == pytest.approx(0, abs=1e-3)
    assert EXPIRY <= revoked_at < EXPIRY + timedelta(minutes=5)
    sandbox.clock.set(revoked_at + timedelta(minutes=2))  # its rows ingested by then
    rows = [
        row
        for row in sandbox.polls.rows(START, revoked_at + timedelta(minutes=2), now=sandbox.clock.now())
        if row.principal == SB_EXPIRING and row.operation == "KeyGet"
    ]
    assert rows[-1].at == revoked_at and rows[-1].status == 403
    assert rows[-2].at == revoked_at - timedelta(minutes=5) and rows[-2].status == 200


def test_a_firewall_that_blocks_the_service_but_not_the_monitor_is_seen_failing_within_one_poll(sandbox: Sandbox):
    assert "service-access-failing" not in codes(_namespace(_check(sandbox), "sb-b"))
    sandbox.apply(
        SetNetwork(
            at=sandbox.clock.now(),
            vault=OTHER_VAULT,
            default_action="Deny",
            bypass_azure_services=False,
            allows_monitor=True,
        )
    )
    sandbox.clock.advance(timedelta(minutes=5))
    b = _namespace(_check(sandbox), "sb-b")
    failing = next(f for f in b["findings"] if f["code"] == "service-access-failing")
    assert failing["severity"] == "critical" and "HTTP 403" in failing["message"]
    assert "vault-firewall-blocks-service" in codes(b)


def test_a_block_only_the_service_meets_is_critical_where_the_monitor_reads_the_key_as_fine(sandbox: Sandbox):
    sandbox.polls.deny_service(OTHER_VAULT)
    sandbox.clock.advance(timedelta(minutes=5))
    b = _namespace(_check(sandbox), "sb-b")
    assert b["status_now"] == "healthy"  # the monitor's reading: nothing it sees is wrong
    failing = next(f for f in b["findings"] if f["code"] == "service-access-failing")
    # One failed poll might be a key that changed since: a warning that says so (its only key: the namespace is
    # down in the service's eyes until its next poll); the second failed poll makes it critical.
    assert failing["severity"] == "warning" and re.search(
        r"the service's next poll at \S+Z finds it", failing["message"]
    )
    assert "no listed key serves the namespace until then" in failing["message"]
    sandbox.clock.advance(timedelta(minutes=5))
    failing = next(f for f in _namespace(_check(sandbox), "sb-b")["findings"] if f["code"] == "service-access-failing")
    assert failing["severity"] == "critical" and "something the monitor cannot see is in the way" in failing["message"]


def test_a_key_disabled_for_ten_minutes_while_another_serves_is_reported_dropped_once_enabled_again(
    sandbox: Sandbox,
):
    now = sandbox.clock.now()
    sandbox.apply(UpdateVersion(at=now, vault=VAULT, key="k1", version="v1", enabled=False))
    sandbox.clock.advance(timedelta(minutes=10))
    sandbox.apply(UpdateVersion(at=sandbox.clock.now(), vault=VAULT, key="k1", version="v1", enabled=True))
    sandbox.clock.advance(timedelta(minutes=5))
    a = _namespace(_check(sandbox), "sb-a")
    assert a["status_now"] == "healthy" and a["usable_keys_now"] == 2  # the monitor reads both keys as fine
    dropped = next(f for f in a["findings"] if f["code"] == "key-dropped-from-record")
    assert dropped["key"] == f"{VAULT}/keys/k1" and dropped["severity"] == "warning"
    # Long after, when the failure has left the window read, the polls without k1 still say so.
    sandbox.clock.advance(timedelta(minutes=40))
    assert "key-dropped-from-record" in codes(_namespace(_check(sandbox), "sb-a"))


def test_the_legacy_azure_diagnostics_shape_is_read_as_the_resource_specific_one(sandbox: Sandbox):
    sandbox.logs.set_diagnostics(OTHER_VAULT, "AzureDiagnostics")
    b = _namespace(_check(sandbox), "sb-b")
    assert b["observed"]["status"] == "observed" and b["observed"]["phase_known"]


def _namespace(run: Run, name: str) -> dict[str, Any]:
    return next(n for n in run.json["namespaces"] if n["name"] == name)


def _verdicts(run: Run) -> dict[str, tuple[str, int]]:
    return {n["name"]: (n["status_now"], n["usable_keys_now"]) for n in run.json["namespaces"]}


BLIND_CASES = [
    pytest.param(lambda s: s.logs.set_diagnostics(OTHER_VAULT, None), "no diagnostic setting", id="no-diagnostics"),
    pytest.param(
        lambda s: setattr(s.logs.workspace, "readable", False), "HTTP 403 InsufficientAccessError", id="unreadable"
    ),
    pytest.param(lambda s: s.faults.respond(429, service="loganalytics"), "HTTP 429", id="throttled-query"),
    pytest.param(lambda s: s.faults.respond(500, service="loganalytics"), "HTTP 500", id="failed-query"),
    pytest.param(
        lambda s: s.faults.respond(403, service="arm", path="diagnosticSettings"),
        "diagnostic settings of",
        id="settings-forbidden",
    ),
    pytest.param(lambda s: s.faults.reset(service="loganalytics"), "failed", id="connection-reset"),
]


@pytest.mark.parametrize(("fault", "reason"), BLIND_CASES)
def test_what_could_not_be_observed_is_unknown_never_a_verdict(sandbox: Sandbox, fault: Any, reason: str):
    sandbox.polls.deny_service(OTHER_VAULT)  # what the audit log would show, were it read
    sandbox.clock.advance(timedelta(minutes=5))
    seen = _check(sandbox)
    assert "service-access-failing" in codes(_namespace(seen, "sb-b"))
    fault(sandbox)
    blind = _check(sandbox)
    b = _namespace(blind, "sb-b")
    assert b["observed"]["status"] == "unknown" and reason in b["observed"]["reason"]
    assert {"service-access-failing", "key-dropped-from-record"}.isdisjoint(codes(b))
    assert b["revoked_at"] is None
    # The verdicts are the monitor's reading's alone, as without the audit logs.
    assert _verdicts(blind) == _verdicts(seen)
    if reason == "no diagnostic setting":
        assert "diagnostics-missing" in codes(b)


def test_a_query_the_stand_in_does_not_answer_is_refused_as_the_service_refuses_a_bad_query(sandbox: Sandbox):
    import json
    import ssl
    import urllib.request

    workspace = sandbox.logs.workspace.customer_id
    request = urllib.request.Request(  # noqa: S310 - the stand-in's own HTTPS URL
        f"{sandbox.logs_endpoint}/v1/workspaces/{workspace}/query",
        data=json.dumps({"query": "AZKVAuditLogs | take 10"}).encode(),
        headers={"Authorization": f"Bearer {sandbox.token}", "Content-Type": "application/json"},
        method="POST",
    )
    context = ssl.create_default_context(cafile=str(sandbox.ca_path))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=context)  # noqa: S310 - the stand-in's own HTTPS URL
    assert refused.value.code == 400
    body = json.loads(refused.value.read())
    assert body["error"]["code"] == "BadArgumentError" and re.search("let since", body["error"]["message"])


def test_the_poll_on_the_deployed_stores_pages_the_services_failing_calls_once_and_holds_them_while_blind(
    store_settings: dict[str, str],
):
    """As deployed (SQLite and Azurite Table Storage, alerts to a webhook): a block only the service meets opens
    one `service` incident, escalated once a second poll confirms it; a throttled audit-log query then moves
    nothing (neither resolved nor paged again); once the block is lifted and the service's calls pass, it
    resolves once."""
    import asyncio
    import json
    import ssl

    from monitor.app.poll import deliver_alerts, poll
    from monitor.entry.bootstrap import build_monitor
    from monitor.entry.config import Settings
    from tests.alerts.receiver import AlertReceiver
    from tests.hardening.support import FAST_AZURE

    async def run(receiver: AlertReceiver) -> list[tuple[str, str, str]]:
        async with Sandbox(parsed(_fleet())) as sandbox:
            environment = {
                **sandbox.environment(),
                **FAST_AZURE,
                **store_settings,
                "KEYHEALTH_HTTP_RETRIES": "0",
                "KEYHEALTH_AUDIT_LOGS": "on",
                "KEYHEALTH_ALERTS": json.dumps({"sinks": {"pager": {"type": "webhook", "url": receiver.url()}}}),
            }
            monitor = build_monitor(Settings.from_environment(environment))
            start = sandbox.clock.now()
            steps: list[tuple[str, str, str]] = []
            try:
                steps_to_take: list[tuple[int, Callable[[], object]]] = [
                    (0, lambda: sandbox.polls.deny_service(OTHER_VAULT)),
                    (5, lambda: None),
                    (10, lambda: None),
                    (15, lambda: sandbox.faults.respond(429, service="loganalytics")),
                    (20, sandbox.faults.clear),
                    (25, lambda: sandbox.polls.allow_service(OTHER_VAULT)),
                    (30, lambda: None),
                ]
                for minutes, action in steps_to_take:
                    action()
                    sandbox.clock.set(start + timedelta(minutes=minutes, seconds=1))
                    now = sandbox.clock.now()
                    before = len(receiver.hits)
                    result = await poll(monitor, now=now)
                    assert result.ran and result.report is not None
                    await deliver_alerts(monitor, now=now + timedelta(seconds=30))
                    for hit in receiver.hits[before:]:
                        alert = json.loads(hit.raw)
                        if alert["namespace"]["name"] == "sb-b":
                            steps.append((str(minutes), alert["condition"], f"{alert['notice']}:{alert['level']}"))
            finally:
                assert monitor.close is not None
                await monitor.close()
            return steps

    with AlertReceiver(ssl.create_default_context(), plain_http=True) as receiver:
        steps = asyncio.run(run(receiver))
    service = [step for step in steps if step[1] == "service"]
    # Opened at the first failed poll (a warning), escalated at the second: one critical page, not one a poll.
    assert service[0][0] in {"5", "10"} and service[0][2] == "open:warning", steps
    assert len([s for s in service if s[2] == "escalate:critical"]) == 1, steps
    assert [s for s in service if s[2].startswith("resolve")] and all(
        int(s[0]) >= 25 for s in service if s[2].startswith("resolve")
    ), steps
    # Blind at 15 (the query throttled): nothing about the service's calls moved.
    assert not [s for s in service if s[0] == "15"], steps
    assert len([s for s in service if s[2].startswith("open")]) == 1, steps


def test_a_call_is_queryable_only_once_ingested_as_in_log_analytics(sandbox: Sandbox):
    now = sandbox.clock.now()
    phase = phase_of(_namespace_id(sandbox, "sb-a"))
    # The clock just after one of sb-a's polls: its rows are not in the workspace yet.
    just_after = now + timedelta(seconds=(phase - (now - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) % 300 + 5)
    sandbox.clock.set(just_after)
    poll_at = just_after - timedelta(seconds=5)

    def sb_a_rows() -> list[Any]:
        found = sandbox.polls.rows(
            poll_at - timedelta(seconds=1), poll_at + timedelta(seconds=2), now=sandbox.clock.now()
        )
        return [row for row in found if row.principal == SB_A]

    assert sb_a_rows() == []
    sandbox.clock.set(just_after + sandbox.polls.ingestion)
    assert {row.operation for row in sb_a_rows()} == {"KeyGet", "KeyUnwrap"}


def test_one_failed_query_blinds_only_the_namespaces_whose_identities_it_asked_for(sandbox: Sandbox):
    """Queries go per 1,000 principals: one that fails makes its own namespaces unobserved, not the workspace's."""
    import asyncio
    import os

    from monitor.adapters.audit_logs import AuditLogObserver
    from monitor.adapters.azure_clients import AzureClients
    from monitor.app.reading import read_snapshot
    from monitor.entry.bootstrap import azure_options, build_credential, build_readers
    from monitor.entry.config import Settings

    async def run() -> Any:
        settings = Settings.from_environment(dict(os.environ))
        credential = build_credential(settings)
        clients = AzureClients(credential, azure_options(settings))
        try:
            snapshot = await read_snapshot(build_readers(clients, settings))
            observer = AuditLogObserver(clients, logs_endpoint=settings.logs_endpoint, principals_per_query=1)
            sandbox.faults.respond(500, service="loganalytics", times=1)
            return await observer.observe(snapshot, now=sandbox.clock.now())
        finally:
            await clients.close()
            await credential.close()

    reading = asyncio.run(run())
    assert reading.queries == 3 and reading.failed_queries == 1
    unobserved = [o.unobserved for o in reading.observations.values() if o.unobserved is not None]
    assert len(unobserved) == 1 and "HTTP 500" in unobserved[0]
    assert sum(1 for o in reading.observations.values() if o.unobserved is None) == 2


def test_the_stand_ins_logs_api_answers_nothing_without_a_bearer_token(sandbox: Sandbox):
    """As the service: no token, a 401 with its challenge, and no rows."""
    import json
    import ssl
    import urllib.request

    request = urllib.request.Request(  # noqa: S310 - the stand-in's own HTTPS URL
        f"{sandbox.logs_endpoint}/v1/workspaces/{sandbox.logs.workspace.customer_id}/query",
        data=json.dumps({"query": "AZKVAuditLogs | take 1"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    context = ssl.create_default_context(cafile=str(sandbox.ca_path))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=context)  # noqa: S310 - the stand-in's own HTTPS URL
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer authorization_uri=")
    assert json.loads(refused.value.read())["error"]["code"] == "AuthorizationRequiredError"

"""`keyhealth serve`: the webhook, status and health over real HTTP, against the stand-in and a SQLite store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.keyvault.keys._shared import http_challenge_cache

from monitor.domain.model import DeleteKey, SetAccess
from monitor.entry.schedule import next_fire, parse_schedule, schedule_period
from monitor.entry.webhook import MAX_BODY
from tests.builders import SYSTEM_PRINCIPAL, VAULT, key, key_event, namespace, ref, scenario, vault
from tests.hardening.support import TEST_SECRET, Running
from tests.hardening.support import serving as serving_document

OTHER = "https://kv-other.vault.azure.net"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"  # the builders' namespaces' subscription
VALIDATION = FIXTURES / "microsoftdocs-azure-docs/end-point-validation-event-grid-events-schema_2179f4c"


@pytest.fixture(autouse=True)
def clear_challenge_cache() -> Iterator[None]:
    http_challenge_cache.clear()
    yield
    http_challenge_cache.clear()


def serving(tmp_path: Path, secret: str | None = None) -> AbstractAsyncContextManager[Running]:
    """`serve` against the stand-in serving three namespaces over two vaults, after its start-up poll."""
    document = scenario(
        [
            namespace("sb-one", ref("k1")),
            namespace("sb-two", ref("k2"), ref("k3", vault_uri=OTHER)),
            namespace("sb-other", ref("k3", vault_uri=OTHER)),
        ],
        [key("k1"), key("k2"), key("k3", vault_uri=OTHER)],
        vaults=[vault(), vault(OTHER)],
        now=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    return serving_document(tmp_path, document, **({"KEYHEALTH_WEBHOOK_SECRET": secret} if secret else {}))


_event = key_event


def test_the_event_grid_validation_handshake_echoes_the_code(tmp_path):
    """Microsoft's published SubscriptionValidationEvent, for a topic in the monitor's subscription, is answered
    with its published response."""

    async def scenario_() -> None:
        published = json.loads((VALIDATION / "SubscriptionValidationEvent.json").read_text())
        ours = [{**published[0], "topic": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/x/y/z"}]
        async with serving(tmp_path) as run:
            status, body = await run.post("/api/events", ours)
            assert status == 200
            assert body == json.loads((VALIDATION / "SubscriptionValidationResponse.json").read_text())

    asyncio.run(scenario_())


def test_the_validation_handshake_is_refused_for_a_topic_the_monitor_does_not_watch(tmp_path):
    """The published event names a subscription (all x) that holds none of the fleet: 403, no code echoed, so
    nobody can point a topic of their own at the monitor."""

    async def scenario_() -> None:
        async with serving(tmp_path) as run:
            status, body = await run.post("/api/events", (VALIDATION / "SubscriptionValidationEvent.json").read_bytes())
            assert status == 403, body
            assert "validationResponse" not in body and "not in a subscription this monitor watches" in body["error"]
            assert run.server.refused["403"] == 1

    asyncio.run(scenario_())


def test_the_cloudevents_handshake_allows_the_origin(tmp_path):
    """OPTIONS with WebHook-Request-Origin is answered with that origin and any rate, on both paths."""

    async def scenario_() -> None:
        async with serving(tmp_path) as run:
            for path in ("/api/events", "/events"):
                headers = {"WebHook-Request-Origin": "eventgrid.azure.net"}
                async with run.session.options(run.url + path, headers=headers) as reply:
                    assert reply.status == 200
                    assert reply.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
                    assert reply.headers["WebHook-Allowed-Rate"] == "*"

    asyncio.run(scenario_())


def test_the_stand_in_delivers_with_its_handshakes_in_both_schemas(tmp_path):
    """The stand-in's Event Grid subscriptions validate the endpoint in either schema and have events accepted."""

    async def scenario_() -> None:
        async with serving(tmp_path) as run:
            subscriptions = [
                await run.sandbox.deliver_events_to_async(
                    f"{run.url}/api/events?code={TEST_SECRET}", schema, handshake=True
                )
                for schema in ("eventgrid", "cloudevents")
            ]
            run.sandbox.apply(
                SetAccess(at=run.sandbox.clock.now(), vault=OTHER, principal=SYSTEM_PRINCIPAL, permissions=frozenset())
            )
            await run.sandbox.flush_events_async()
            for subscription in subscriptions:
                assert subscription.deliveries and all(d.delivered for d in subscription.deliveries)
            assert (await run.get("/status/sb-other"))[1]["status_now"] == "revoked"

    asyncio.run(scenario_())


def test_a_vault_access_policy_change_re_evaluates_the_vaults_namespaces(tmp_path):
    """A VaultAccessPolicyChanged delivery re-reads every namespace listing a key of that vault, and only those."""

    async def scenario_() -> None:
        async with serving(tmp_path) as run:
            run.sandbox.apply(
                SetAccess(at=run.sandbox.clock.now(), vault=OTHER, principal=SYSTEM_PRINCIPAL, permissions=frozenset())
            )
            status, body = await run.post(
                "/api/events", [_event("Microsoft.KeyVault.VaultAccessPolicyChanged", OTHER, None)]
            )
            assert status == 200 and body["outcomes"] == {"evaluated": 1} and body["received"] == 1
            assert (await run.get("/status/sb-other"))[1]["status_now"] == "revoked"
            assert (await run.get("/status/sb-two"))[1]["status_now"] == "degraded"
            assert (await run.get("/status/sb-one"))[1]["status_now"] == "healthy"

    asyncio.run(scenario_())


def test_a_cloudevents_batch_with_a_new_version_re_evaluates_and_counts_rejects(tmp_path):
    """A CloudEvents batch re-reads the key's namespaces; a malformed entry is rejected with its reason."""

    async def scenario_() -> None:
        async with serving(tmp_path) as run:
            run.sandbox.apply(DeleteKey(at=run.sandbox.clock.now(), vault=VAULT, key="k1"))
            good = _event("Microsoft.KeyVault.KeyNewVersionCreated", VAULT, "k1", "ce-1")
            cloud = {
                "specversion": "1.0",
                "id": "ce-1",
                "source": good["topic"],
                "type": good["eventType"],
                "subject": "k1",
                "time": good["eventTime"],
                "data": good["data"],
            }
            batch = [cloud, {"specversion": "1.0", "id": "ce-2", "source": "x"}]
            status, body = await run.post("/events", batch, "application/cloudevents-batch+json")
            assert status == 200
            assert body["outcomes"] == {"evaluated": 1, "rejected": 1}
            assert body["rejected"] == [{"index": 1, "id": "ce-2", "reason": "event has no type"}]
            assert (await run.get("/status/sb-one"))[1]["status_now"] == "revoked"

    asyncio.run(scenario_())


def test_the_secret_is_required_when_set(tmp_path, caplog):
    """With a webhook secret, a request without it is 401; ?code= or the header passes; the log never shows it."""

    async def scenario_() -> None:
        async with serving(tmp_path, secret="hunter2-s3cret") as run:
            anonymous = await run.post("/api/events", [_event("x.y", VAULT, "k1")], credentials=False)
            assert anonymous[0] == 401
            assert (await run.post("/api/events?code=wrong", [_event("x.y", VAULT, "k1")]))[0] == 401
            assert (await run.get("/status", credentials=False))[0] == 401
            ok = await run.post("/api/events?code=hunter2-s3cret", [_event("x.y", VAULT, "k1")])
            assert ok[0] == 200
            headers = {"x-keyhealth-key": "hunter2-s3cret"}
            assert (await run.post("/api/events", [_event("x.y", VAULT, "k1", "e-2")], headers=headers))[0] == 200
            assert (await run.get("/healthz"))[0] == 200

    with caplog.at_level("DEBUG"):
        asyncio.run(scenario_())
    assert "hunter2-s3cret" not in caplog.text
    assert "refused POST /api/events" in caplog.text


def test_bad_bodies_are_400_413_and_415(tmp_path):
    """Not JSON is 400 with the reason, a body over 1 MiB is 413, and a non-JSON content type is 415."""

    async def scenario_() -> None:
        async with serving(tmp_path) as run:
            status, body = await run.post("/api/events", b"{not json")
            assert status == 400 and "body is not JSON" in body["error"]
            status, body = await run.post("/api/events", [])
            assert status == 400 and "empty" in body["error"]
            assert (await run.post("/api/events", b"[" + b" " * MAX_BODY + b"]"))[0] == 413
            assert (await run.post("/api/events", b"[]", "text/plain"))[0] == 415

    asyncio.run(scenario_())


def test_status_and_healthz_report_the_start_up_poll(tmp_path):
    """After the start-up poll /status lists the fleet, /status/{name} shows one, and /healthz is 200."""

    async def scenario_() -> None:
        async with serving(tmp_path) as run:
            status, body = await run.get("/status")
            assert status == 200
            assert {n["name"]: n["status_now"] for n in body["namespaces"]} == {
                "sb-one": "healthy",
                "sb-two": "healthy",
                "sb-other": "healthy",
            }
            assert (await run.get("/api/status/sb-two"))[1]["usable_keys_now"] == 2
            status, missing = await run.get("/status/sb-nope")
            assert status == 404 and "sb-nope" in missing["error"]
            status, health = await run.get("/healthz")
            assert status == 200 and health["outcome"] == "ok" and health["last_poll"]

    asyncio.run(scenario_())


def test_healthz_is_503_when_no_poll_ran_for_two_periods(tmp_path):
    """Two schedule periods without a poll make /healthz 503."""

    async def scenario_() -> None:
        async with serving(tmp_path) as run:
            run.server._tick = 3600  # the loop stays asleep; this test drives the clock
            run.sandbox.clock.advance(timedelta(minutes=11))
            status, body = await run.get("/healthz")
            assert status == 503 and body["healthy"] is False

    asyncio.run(scenario_())


def test_a_failed_poll_makes_healthz_503(tmp_path):
    """A poll that raises is recorded as failed and /healthz answers 503 with the error."""

    async def scenario_() -> None:
        async with serving(tmp_path) as run:
            store = run.server.monitor.store

            async def broken(*args: Any, **kwargs: Any) -> Any:
                raise RuntimeError("store unavailable")

            original = store.acquire_lease
            store.acquire_lease = broken  # type: ignore[method-assign]
            try:
                run.sandbox.clock.advance(timedelta(minutes=5))
                await run.server.poll_if_due()  # runs it, or waits for the loop's run to finish
                record = run.server.last_poll
                assert record is not None and record.outcome == "failed"
                status, body = await run.get("/healthz")
                assert status == 503 and "store unavailable" in body["error"]
            finally:
                store.acquire_lease = original  # type: ignore[method-assign]

    asyncio.run(scenario_())


def test_a_poll_that_cannot_list_any_subscription_makes_healthz_503(tmp_path):
    """When ARM refuses every namespace listing, the poll is blind and /healthz says so with the reason."""

    async def scenario_() -> None:
        async with serving(tmp_path) as run:
            run.sandbox.faults.respond(403, service="arm", code="AuthorizationFailed")
            run.sandbox.clock.advance(timedelta(minutes=5))
            await run.server.poll_if_due()
            status, body = await run.get("/healthz")
            assert status == 503 and body["outcome"] == "blind"
            assert "AuthorizationFailed" in body["error"]

    asyncio.run(scenario_())


@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        ("0 */5 * * * *", "2026-11-23T10:02:30Z", "2026-11-23T10:05:00Z"),
        ("0 */5 * * * *", "2026-11-23T10:05:00Z", "2026-11-23T10:10:00Z"),
        ("0 */5 * * * *", "2026-12-31T23:59:59Z", "2027-01-01T00:00:00Z"),
        ("*/15 * * * * *", "2026-11-23T10:00:50Z", "2026-11-23T10:01:00Z"),
        ("30 0 9 * * 1-5", "2026-11-27T09:00:31Z", "2026-11-30T09:00:30Z"),  # Friday -> Monday
        ("0 0 0,12 * * *", "2026-11-23T12:00:00Z", "2026-11-24T00:00:00Z"),
        ("0 0 0 29 2 *", "2026-03-01T00:00:00Z", "2028-02-29T00:00:00Z"),
        ("0 10-20/5 * * * 0", "2026-11-23T00:00:00Z", "2026-11-29T00:10:00Z"),  # Sunday
    ],
)
def test_next_fire_follows_the_ncrontab_schedule(schedule, after, expected):
    """next_fire returns the first instant strictly after the given one that the schedule matches."""
    parse = datetime.fromisoformat
    assert next_fire(schedule, parse(after)) == parse(expected)


def test_bad_and_impossible_schedules_are_refused():
    """Wrong field counts, unknown tokens, out-of-range values and schedules that never fire raise ValueError."""
    for bad in ("0 */5 * * *", "0 x * * * *", "0 61 * * * *", "0 */0 * * * *"):
        with pytest.raises(ValueError):
            parse_schedule(bad)
    with pytest.raises(ValueError, match="never fires"):
        next_fire("0 0 0 30 2 *", datetime(2026, 1, 1, tzinfo=UTC))
    assert schedule_period("0 */5 * * * *", datetime(2026, 1, 1, tzinfo=UTC)) == timedelta(minutes=5)


def test_metrics_are_scraped_in_the_prometheus_format(tmp_path):
    """GET /metrics after the start-up poll: the fleet gauges, per namespace, and the poll counter."""

    async def scenario_() -> str:
        async with serving(tmp_path) as run, run.session.get(run.url + "/metrics") as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"].startswith("text/plain")
            return await reply.text()

    text = asyncio.run(scenario_())
    lines = text.splitlines()
    assert any(
        line.startswith("keyhealth_namespace_usable_keys{") and 'namespace="sb-two"' in line and line.endswith(" 2.0")
        for line in lines
    )
    assert any(line.startswith("keyhealth_namespace_status{") and 'status="healthy"' in line for line in lines)
    assert any(line.startswith("keyhealth_polls_total{") and 'outcome="ok"' in line for line in lines)

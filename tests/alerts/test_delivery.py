"""Delivery from the outbox: order per sink, retries with back-off, the bound, one deliverer at a time,
and raising alerts never waiting on a sink."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.adapters.alerts import build_sinks
from monitor.adapters.state_sqlite import SqliteStateStore
from monitor.app.alerting import Alerting, AlertPolicy, raise_alerts
from monitor.app.delivery import deliver
from monitor.domain.documents import format_instant
from monitor.domain.findings import Thresholds
from monitor.domain.fleet import NamespaceReport, evaluate
from monitor.domain.scenario import parse_scenario
from monitor.entry.alert_config import parse_alert_config
from tests.alerts.receiver import AlertReceiver
from tests.builders import key, namespace, ref, scenario, version

T0 = datetime(2026, 11, 22, tzinfo=UTC)
Receivers = Callable[..., AlertReceiver]


def _reports(now: datetime, expiries: dict[str, datetime]) -> tuple[NamespaceReport, ...]:
    """One single-key namespace per name, its key expiring at the given time."""
    document = scenario(
        [namespace(name, ref(f"k-{name}")) for name in expiries],
        [key(f"k-{name}", version("v1", exp=format_instant(exp))) for name, exp in expiries.items()],
        now=format_instant(now),
    )
    parsed, _ = parse_scenario(document)
    return evaluate(parsed, Thresholds()).namespaces


def _config(receiver: AlertReceiver) -> str:
    return json.dumps({"sinks": {"ops": {"type": "webhook", "url": receiver.url()}}})


class Harness:
    """A SQLite store, the alert configuration, and the sinks it builds, on one event loop."""

    def __init__(
        self, path: Path, raw_config: str, ca_bundle: str, environ: dict[str, str] | None = None, **policy: Any
    ):
        self.store = SqliteStateStore(path)
        config = parse_alert_config(raw_config, environ or {})
        self.policy = AlertPolicy(**policy)
        self.alerting = Alerting(store=self.store, router=config.router, policy=self.policy)
        self.sinks = build_sinks(config.sinks, ca_bundle=ca_bundle, timeout=self.policy.send_timeout)

    async def raise_at(self, now: datetime, expiries: dict[str, datetime]) -> list[Any]:
        return await raise_alerts(self.alerting, _reports(now, expiries), key_tags={}, now=now)

    async def deliver(self, now: datetime, holder: str = "test") -> Any:
        return await deliver(self.store, self.sinks.sinks, now=now, policy=self.policy, holder=holder)

    async def close(self) -> None:
        await self.sinks.close()
        await self.store.close()


def test_a_sink_down_for_a_while_gets_every_alert_once_in_order(
    tmp_path: Path, receivers: Receivers, ca_bundle: str, emitted
):
    """500s for the first five tries, then 200: each alert arrives exactly once, in the order they were made."""
    before = {o: emitted.value("keyhealth.alerts.deliveries", sink="ops", outcome=o) for o in ("delivered", "retried")}
    receiver = receivers()
    receiver.fail_next(*([500] * 5))
    hour = timedelta(hours=1)
    a, b, c = T0 + timedelta(days=20), T0 + timedelta(days=21), T0 + timedelta(days=3)

    async def run() -> list[str]:
        harness = Harness(tmp_path / "s.sqlite", _config(receiver), ca_bundle, first_retry=timedelta(seconds=30))
        made = [x.id for x in await harness.raise_at(T0, {"sb-a": a, "sb-b": b})]  # two opens
        made += [x.id for x in await harness.raise_at(T0 + hour, {"sb-a": a, "sb-b": b, "sb-c": c})]  # an open
        sooner = T0 + 2 * hour + timedelta(days=5)  # sb-a's key now expires within the critical threshold
        made += [x.id for x in await harness.raise_at(T0 + 2 * hour, {"sb-a": sooner, "sb-b": b, "sb-c": c})]
        now = T0 + 2 * hour
        for _ in range(40):
            report = await harness.deliver(now)
            if not (await harness.store.list_outbox()):
                break
            assert report.abandoned == 0
            now += timedelta(minutes=1)
        assert await harness.store.list_outbox() == []
        await harness.close()
        return made

    made = asyncio.run(run())
    assert len(made) == 4
    delivered = [h.body["id"] for h in receiver.accepted]
    assert delivered == sorted(made)  # ids sort by when they were made (then by namespace and notice)
    assert [h.body["notice"] for h in receiver.accepted] == ["open", "open", "open", "escalate"]
    assert len(receiver.hits) == 4 + 5
    counted = {o: emitted.value("keyhealth.alerts.deliveries", sink="ops", outcome=o) - before[o] for o in before}
    assert counted == {"delivered": 4, "retried": 5}
    assert all(h.body["id"] == delivered[0] for h in receiver.hits[:6])  # retries never let a later one overtake


def test_raising_alerts_never_contacts_a_sink(tmp_path: Path, receivers: Receivers, ca_bundle: str):
    """A sink that hangs does not slow raising alerts (only the store is written); delivery times it out."""
    receiver = receivers(delay=3.0)

    async def run() -> Any:
        harness = Harness(tmp_path / "s.sqlite", _config(receiver), ca_bundle, send_timeout=0.5)
        alerts = await harness.raise_at(T0, {"sb-a": T0 + timedelta(days=3)})
        assert [a.notice.value for a in alerts] == ["open"] and receiver.hits == []
        report = await harness.deliver(T0)
        (entry,) = await harness.store.list_outbox()
        await harness.close()
        return report, entry

    report, entry = asyncio.run(run())
    assert report.retried == 1 and entry.attempts == 1 and entry.last_error == "no answer within 0.5 s"
    assert entry.next_attempt_at == T0 + timedelta(seconds=30)


def test_an_alert_is_given_up_after_the_bound_and_logged(
    tmp_path: Path, receivers: Receivers, ca_bundle: str, caplog: pytest.LogCaptureFixture
):
    """Still failing 24 hours after it was made: dropped, counted, and logged as undeliverable."""
    receiver = receivers(status=503)

    async def run() -> Any:
        harness = Harness(tmp_path / "s.sqlite", _config(receiver), ca_bundle)
        await harness.raise_at(T0, {"sb-a": T0 + timedelta(days=3)})
        first = await harness.deliver(T0)
        late = await harness.deliver(T0 + timedelta(hours=24))
        left = await harness.store.list_outbox()
        await harness.close()
        return first, late, left

    with caplog.at_level(logging.ERROR, logger="keyhealth.alerts"):
        first, late, left = asyncio.run(run())
    assert (first.retried, late.abandoned, left) == (1, 1, [])
    assert "undeliverable after 2 attempt(s): HTTP 503" in caplog.text


def test_a_rejected_alert_is_dropped_at_once_and_the_next_goes_on(tmp_path: Path, receivers: Receivers, ca_bundle: str):
    """A 400 cannot get better by resending: that alert is dropped, the following one is delivered."""
    receiver = receivers()
    receiver.fail_next(400)

    async def run() -> Any:
        harness = Harness(tmp_path / "s.sqlite", _config(receiver), ca_bundle)
        await harness.raise_at(T0, {"sb-a": T0 + timedelta(days=3), "sb-b": T0 + timedelta(days=4)})
        report = await harness.deliver(T0)
        await harness.close()
        return report

    report = asyncio.run(run())
    assert (report.abandoned, report.delivered) == (1, 1)
    assert [h.status for h in receiver.hits] == [400, 200]


def test_only_one_deliverer_runs_at_a_time(tmp_path: Path, receivers: Receivers, ca_bundle: str):
    """Two instances draining at once: one delivers, the other finds the lease taken; nothing goes twice."""
    receiver = receivers(delay=0.3)

    async def run() -> Any:
        one = Harness(tmp_path / "s.sqlite", _config(receiver), ca_bundle)
        two = Harness(tmp_path / "s.sqlite", _config(receiver), ca_bundle)
        await one.raise_at(T0, {"sb-a": T0 + timedelta(days=3)})
        reports = await asyncio.gather(one.deliver(T0, "one"), two.deliver(T0, "two"))
        await one.close()
        await two.close()
        return reports

    reports = asyncio.run(run())
    assert sorted(r.ran for r in reports) == [False, True]
    assert len(receiver.hits) == 1


def test_an_entry_for_a_sink_no_longer_configured_is_dropped_with_a_log(
    tmp_path: Path, receivers: Receivers, ca_bundle: str, caplog: pytest.LogCaptureFixture
):
    receiver = receivers()

    async def run() -> Any:
        before = Harness(tmp_path / "s.sqlite", _config(receiver), ca_bundle)
        await before.raise_at(T0, {"sb-a": T0 + timedelta(days=3)})
        await before.close()
        after = Harness(tmp_path / "s.sqlite", "", ca_bundle)  # the sink was removed from the configuration
        report = await after.deliver(T0)
        await after.close()
        return report

    with caplog.at_level(logging.ERROR, logger="keyhealth.alerts"):
        report = asyncio.run(run())
    assert report.abandoned == 1 and receiver.hits == []
    assert "no sink named ops is configured any more" in caplog.text


def test_two_instances_judging_the_same_change_queue_one_notice(tmp_path: Path, receivers: Receivers, ca_bundle: str):
    """A poll and an event on two instances see the same warning at once: one incident, one notice per sink."""
    receiver = receivers()

    async def run() -> Any:
        one = Harness(tmp_path / "s.sqlite", _config(receiver), ca_bundle)
        two = Harness(tmp_path / "s.sqlite", _config(receiver), ca_bundle)
        expiry = {"sb-a": T0 + timedelta(days=20)}
        made = await asyncio.gather(*(h.raise_at(T0, expiry) for h in (one, two, one, two)))
        queued = await one.store.list_outbox()
        await one.close()
        await two.close()
        return made, queued

    made, queued = asyncio.run(run())
    assert sum(len(m) for m in made) == 1
    assert [(e.sink, e.document["notice"]) for e in queued] == [("ops", "open")]


def test_two_drains_in_one_process_deliver_each_alert_once(tmp_path: Path, receivers: Receivers, ca_bundle: str):
    """A delivery timer and a wake-up in the same process at once: each alert still goes once."""
    from monitor.app.monitor import Monitor
    from monitor.app.poll import deliver_alerts
    from monitor.app.reading import Readers

    receiver = receivers(delay=0.2)

    async def run() -> Any:
        harness = Harness(tmp_path / "s.sqlite", _config(receiver), ca_bundle)
        await harness.raise_at(T0, {"sb-a": T0 + timedelta(days=3), "sb-b": T0 + timedelta(days=4)})
        monitor = Monitor(
            readers=Readers(None, None, None),  # type: ignore[arg-type]  # delivery reads no Azure
            store=harness.store,
            thresholds=Thresholds(),
            instance="one-process",
            alerting=harness.alerting,
            sinks=harness.sinks.sinks,
        )
        reports = await asyncio.gather(*(deliver_alerts(monitor, now=T0) for _ in range(3)))
        await harness.close()
        return reports

    reports = asyncio.run(run())
    assert sorted(r.ran for r in reports) == [False, False, True]
    assert len(receiver.hits) == 2


def test_a_namespace_that_leaves_the_fleet_resolves_its_incidents(tmp_path: Path, receivers: Receivers, ca_bundle: str):
    """Deleted (or no longer on a customer key): its open incident resolves, to the sinks that heard it open."""
    from monitor.app.alerting import resolve_removed

    receiver = receivers()

    async def run() -> Any:
        harness = Harness(tmp_path / "s.sqlite", _config(receiver), ca_bundle)
        (opened,) = await harness.raise_at(T0, {"sb-gone": T0 + timedelta(days=3)})
        resolved = await resolve_removed(harness.alerting, [opened.namespace_id.upper()], now=T0 + timedelta(hours=1))
        again = await resolve_removed(harness.alerting, [opened.namespace_id], now=T0 + timedelta(hours=2))
        await harness.deliver(T0 + timedelta(hours=2))
        await harness.close()
        return resolved, again

    resolved, again = asyncio.run(run())
    assert [a.notice.value for a in resolved] == ["resolve"] and again == []
    assert [h.body["notice"] for h in receiver.accepted] == ["open", "resolve"]
    assert receiver.accepted[1].body["headline"] == (
        "[RESOLVED] sb-gone: no longer in the fleet (deleted, or no longer on a customer-managed key)"
    )

"""Delivery across instances that pause: a deliverer paused past its lease, resuming after another took over,
sends nothing twice and stops; in the SQLite store and the Table store (Azurite), to a real HTTPS receiver."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from monitor.adapters.alerts import build_sinks
from monitor.app.alerting import Alerting, AlertPolicy, raise_alerts
from monitor.app.delivery import DeliveryReport, deliver
from monitor.app.state import OutboxEntry, StateStore
from monitor.domain.documents import format_instant
from monitor.domain.findings import Thresholds
from monitor.domain.fleet import evaluate
from monitor.domain.scenario import parse_scenario
from monitor.entry.alert_config import parse_alert_config
from tests.adapters.state.support import StoreOpener, sqlite_opener, tables_opener
from tests.alerts.receiver import AlertReceiver
from tests.builders import key, namespace, ref, scenario, version

T0 = datetime(2026, 11, 22, tzinfo=UTC)
POLICY = AlertPolicy()
# What deliver() takes the delivery lease for: past it, another instance may take over.
LEASE = timedelta(seconds=POLICY.delivery_budget + 2 * POLICY.send_timeout + 30)


@pytest.fixture(params=["sqlite", "tables"])
def backing(request: pytest.FixtureRequest, tmp_path: Path) -> StoreOpener:
    """Opens store objects on one fresh backing: a SQLite file, or fresh tables in Azurite (two instances' view)."""
    if request.param == "sqlite":
        return sqlite_opener(tmp_path / "state.sqlite")
    return tables_opener(request.getfixturevalue("azurite"), f"t{uuid.uuid4().hex[:16]}")


class PausedAfterReading:
    """An instance's store through which the outbox read completes, then the instance stops until resumed
    (a long GC pause, a frozen VM): everything else passes straight through."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.has_read = asyncio.Event()
        self.resume = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def list_outbox(self) -> list[OutboxEntry]:
        entries = await self._store.list_outbox()
        self.has_read.set()
        await self.resume.wait()
        return entries


class SteppedClock:
    """Monotonic time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _queue_two_alerts(store: StateStore) -> None:
    expiries = {"sb-a": T0 + timedelta(days=3), "sb-b": T0 + timedelta(days=4)}
    document = scenario(
        [namespace(name, ref(f"k-{name}")) for name in expiries],
        [key(f"k-{name}", version("v1", exp=format_instant(exp))) for name, exp in expiries.items()],
        now=format_instant(T0),
    )
    parsed, _ = parse_scenario(document)
    config = parse_alert_config(json.dumps({"sinks": {"ops": {"type": "webhook", "url": "https://unused"}}}), {})
    alerting = Alerting(store=store, router=config.router, policy=POLICY)
    assert len(await raise_alerts(alerting, evaluate(parsed, Thresholds()).namespaces, key_tags={}, now=T0)) == 2


def _sinks(receiver: AlertReceiver, ca_bundle: str) -> Any:
    config = parse_alert_config(json.dumps({"sinks": {"ops": {"type": "webhook", "url": receiver.url()}}}), {})
    return build_sinks(config.sinks, ca_bundle=ca_bundle, timeout=POLICY.send_timeout)


def _delivered_ids(receiver: AlertReceiver) -> list[str]:
    return [hit.body["id"] for hit in receiver.hits]


def test_a_deliverer_paused_past_its_lease_does_not_resend_what_the_next_one_delivered(
    backing: StoreOpener, receivers: Callable[..., AlertReceiver], ca_bundle: str
):
    """A takes the lease and reads the outbox, then pauses past its lease; B takes over and delivers both
    alerts; A resumes with its old reading: the receiver got each alert exactly once, and A sent nothing."""
    receiver = receivers()

    async def run() -> tuple[DeliveryReport, DeliveryReport, list[OutboxEntry]]:
        async with backing() as store_a, backing() as store_b:
            await _queue_two_alerts(store_b)
            sinks = _sinks(receiver, ca_bundle)
            try:
                paused = PausedAfterReading(store_a)
                a = asyncio.create_task(
                    deliver(cast(StateStore, paused), sinks.sinks, now=T0, policy=POLICY, holder="instance-a")
                )
                await paused.has_read.wait()
                b = await deliver(store_b, sinks.sinks, now=T0 + LEASE, policy=POLICY, holder="instance-b")
                paused.resume.set()
                report_a = await a
            finally:
                await sinks.close()
            return report_a, b, await store_b.list_outbox()

    report_a, report_b, left = asyncio.run(run())
    assert report_b.ran and report_b.delivered == 2
    assert report_a.ran and report_a.delivered == 0
    ids = _delivered_ids(receiver)
    assert len(ids) == 2 and len(set(ids)) == 2
    assert left == []


def test_a_deliverer_that_finds_its_lease_taken_over_stops_before_sending(
    backing: StoreOpener, receivers: Callable[..., AlertReceiver], ca_bundle: str
):
    """A reads the outbox and pauses past its lease; B takes the lease over but has not sent yet; A resumes:
    its renewal fails, so A sends nothing and leaves both alerts queued for B."""
    receiver = receivers()
    clock = SteppedClock()

    async def run() -> tuple[DeliveryReport, list[OutboxEntry], Any]:
        async with backing() as store_a, backing() as store_b:
            await _queue_two_alerts(store_b)
            sinks = _sinks(receiver, ca_bundle)
            try:
                paused = PausedAfterReading(store_a)
                a = asyncio.create_task(
                    deliver(
                        cast(StateStore, paused), sinks.sinks, now=T0, policy=POLICY, holder="instance-a", clock=clock
                    )
                )
                await paused.has_read.wait()
                taken = await store_b.acquire_lease("alert-delivery", "instance-b", LEASE, now=T0 + LEASE)
                assert taken is not None
                clock.now += LEASE.total_seconds()  # the pause, as A's monotonic clock saw it
                paused.resume.set()
                report_a = await a
            finally:
                await sinks.close()
            return report_a, await store_b.list_outbox(), await store_b.get_lease("alert-delivery")

    report_a, left, lease = asyncio.run(run())
    assert report_a.lost_lease and report_a.delivered == 0 and report_a.waiting == 2
    assert receiver.hits == []
    assert len(left) == 2 and all(entry.claimed_by is None for entry in left)
    assert lease is not None and lease.holder == "instance-b"  # A's release did not free B's lease

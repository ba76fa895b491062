"""Delivering the outbox: under the delivery lease (renewed, fenced), each sink's queued notices are sent in
order, retried with back-off, abandoned after the last attempt; and the test alerts of `keyhealth alerts test`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from monitor.app.alerting import LOG, AlertPolicy
from monitor.app.leases import LeaseKeeper
from monitor.app.ports import AlertSink
from monitor.app.state import OutboxEntry, StateStore
from monitor.app.telemetry import count_delivery
from monitor.domain.alert import (
    Alert,
    sample_alert,
)
from monitor.domain.errors import DeliveryError

DELIVERY_LEASE = "alert-delivery"


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """One drain of the outbox."""

    ran: bool  # False: another instance is delivering
    delivered: int = 0
    retried: int = 0  # failed this time, due again later
    abandoned: int = 0  # given up: logged as undeliverable
    waiting: int = 0  # left queued behind a failure, not yet due, or claimed by another deliverer
    lost_lease: bool = False  # another deliverer took over mid-drain: this one stopped

    def describe(self) -> str:
        if not self.ran:
            return "keyhealth: another instance is delivering alerts"
        lost = "; stopped: another instance took the delivery lease over" if self.lost_lease else ""
        return (
            f"keyhealth: alerts delivered {self.delivered}, retrying {self.retried}, "
            f"undeliverable {self.abandoned}, waiting {self.waiting}{lost}"
        )


# Before each send the deliverer confirms its lease, renewing it at most this often (seconds of monotonic
# time): cheap, and a deliverer paused longer than that finds out before it sends anything more.
DELIVERY_RENEW_EVERY = 1.0
# A claim covers one send (its timeout) and the write after it, with room for a slow store.
_CLAIM_MARGIN = timedelta(seconds=30)


async def deliver(
    store: StateStore,
    sinks: Mapping[str, AlertSink],
    *,
    now: datetime,
    policy: AlertPolicy,
    holder: str,
    clock: Callable[[], float] = time.monotonic,
) -> DeliveryReport:
    """Send what the outbox holds that is due at `now`: each sink in order, the sinks side by side.

    One deliverer at a time holds the delivery lease, and fences its work with it: before each send it
    confirms (renews) the lease, and stops for good once that fails; it claims each entry with a write
    conditioned on the etag it read (a claim fails when the entry changed or went since), and conditions
    its delete or retry record on the claim. So a deliverer paused past its lease, resuming after another
    took over, sends nothing that the other sent, and overwrites nothing the other recorded. `clock` is the
    monotonic time the renewals are measured by (injectable for tests).

    Raises StateStoreError when the store fails (entries stay queued and are sent by a later run).
    """
    duration = timedelta(seconds=policy.delivery_budget + 2 * policy.send_timeout + 30)
    lease = await store.acquire_lease(DELIVERY_LEASE, holder, duration, now=now)
    if lease is None:
        return DeliveryReport(ran=False)
    keeper = LeaseKeeper(store, lease, duration, acquired_at=now, renew_every=DELIVERY_RENEW_EVERY, clock=clock)
    try:
        queues: dict[str, list[OutboxEntry]] = {}
        for entry in await store.list_outbox():
            queues.setdefault(entry.sink, []).append(entry)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.delivery_budget
        counts = await asyncio.gather(
            *(
                _drain(store, keeper, sinks.get(name), name, queue, now, policy, deadline)
                for name, queue in queues.items()
            )
        )
    finally:
        await keeper.release()
    delivered, retried, abandoned, waiting = (sum(c[i] for c in counts) for i in range(4))
    return DeliveryReport(
        ran=True, delivered=delivered, retried=retried, abandoned=abandoned, waiting=waiting, lost_lease=keeper.lost
    )


async def _abandon(store: StateStore, entry: OutboxEntry, attempts: int, reason: str) -> None:
    if not await store.delete_outbox_entry(entry):
        return  # changed or gone since it was read: another deliverer has it now
    count_delivery(entry.sink, "undeliverable")
    LOG.error(
        "keyhealth: alert %s for sink %s is undeliverable after %d attempt(s): %s; it is dropped",
        entry.id,
        entry.sink,
        attempts,
        reason,
    )


async def _drain(
    store: StateStore,
    keeper: LeaseKeeper,
    sink: AlertSink | None,
    name: str,
    queue: list[OutboxEntry],
    now: datetime,
    policy: AlertPolicy,
    deadline: float,
) -> tuple[int, int, int, int]:
    delivered = retried = abandoned = 0
    loop = asyncio.get_running_loop()
    for position, read in enumerate(queue):
        waiting = len(queue) - position
        if read.due_at > now or loop.time() >= deadline or read.claimed_at(keeper.now()):
            return delivered, retried, abandoned, waiting  # later entries wait: order per sink
        if not await keeper.hold():
            return delivered, retried, abandoned, waiting  # another deliverer took over: it sends the rest
        if sink is None:
            await _abandon(store, read, read.attempts, f"no sink named {name} is configured any more")
            abandoned += 1
            continue
        try:
            alert = Alert.from_document(read.document)
        except (KeyError, TypeError, ValueError) as error:
            await _abandon(store, read, read.attempts, f"the queued alert is unreadable ({error})")
            abandoned += 1
            continue
        claim_until = keeper.now() + timedelta(seconds=policy.send_timeout) + _CLAIM_MARGIN
        entry = await store.claim_outbox_entry(read, holder=keeper.lease.holder, until=claim_until)
        if entry is None:
            # Changed or delivered since it was read: another deliverer has this sink's queue now.
            return delivered, retried, abandoned, waiting
        try:
            await asyncio.wait_for(sink.send(alert, now=now), policy.send_timeout)
        except (DeliveryError, TimeoutError) as failure:
            attempts = entry.attempts + 1
            if isinstance(failure, DeliveryError):
                reason, retryable, asked = failure.reason, failure.retryable, failure.retry_after
            else:
                reason, retryable, asked = f"no answer within {policy.send_timeout:g} s", True, None
            if not retryable or now - entry.created_at >= policy.give_up_after:
                await _abandon(store, entry, attempts, reason)
                abandoned += 1
                continue
            delay = max(policy.retry_delay(attempts), timedelta(seconds=asked or 0))
            count_delivery(name, "retried")
            await store.update_outbox_entry(
                replace(entry, attempts=attempts, next_attempt_at=now + delay, last_error=reason)
            )
            LOG.warning(
                "keyhealth: sink %s failed alert %s (attempt %d): %s; retrying at %s",
                name,
                entry.id,
                attempts,
                reason,
                (now + delay).isoformat(),
            )
            return delivered, retried + 1, abandoned, waiting - 1
        count_delivery(name, "delivered")
        if not await store.delete_outbox_entry(entry):
            LOG.warning(
                "keyhealth: alert %s for sink %s was sent, but another deliverer took it over after its claim "
                "ran out: the sink may hear it twice (receivers can drop repeats by the alert id)",
                entry.id,
                name,
            )
        delivered += 1
    return delivered, retried, abandoned, 0


# -- checking the wiring


@dataclass(frozen=True, slots=True)
class SinkCheck:
    sink: str
    kind: str
    error: str | None = None  # None: the sink took it

    @property
    def ok(self) -> bool:
        return self.error is None


async def send_test_alerts(
    sinks: Mapping[str, AlertSink], names: Sequence[str], *, now: datetime, policy: AlertPolicy
) -> list[SinkCheck]:
    """Send the sample alert (marked as a test) straight to each named sink, bypassing incidents and the outbox.

    Raises KeyError naming a sink that is not configured.
    """
    chosen = list(names) or sorted(sinks)
    for name in chosen:
        if name not in sinks:
            raise KeyError(name)
    alert = sample_alert(now, portal=policy.portal)
    results = []
    for name in chosen:
        sink = sinks[name]
        try:
            await asyncio.wait_for(sink.send(alert, now=now), policy.send_timeout)
        except DeliveryError as failure:
            results.append(SinkCheck(name, sink.kind, failure.reason))
        except TimeoutError:
            results.append(SinkCheck(name, sink.kind, f"no answer within {policy.send_timeout:g} s"))
        else:
            results.append(SinkCheck(name, sink.kind))
    return results

"""The Monitor: what the poll and the event handler share (readers, the state store, alerting, remediation,
coalescing), the poll lease's timing, and recording judgements in the store."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.app.alerting import Alerting
from monitor.app.coalescing import EventCoalescer
from monitor.app.ports import AlertSink
from monitor.app.reading import Readers
from monitor.app.remediation import Outcome, Remediation, remediate
from monitor.app.state import NamespaceState, StateStore, StateSummary
from monitor.domain.findings import Thresholds
from monitor.domain.fleet import FleetReport, NamespaceReport
from monitor.domain.model import KeyId, Snapshot
from monitor.domain.remediation import Mode
from monitor.domain.world import World
from monitor.formats.render import namespace_document

POLL_LEASE = "poll"
RECORD_BATCH = 2000  # namespace states made and written at a time
MADE_BETWEEN_YIELDS = 50  # states made in a row while a batch is written, before its requests get a turn
# Up to this many namespaces, an event reads each one's incidents on its own; beyond, all of them at once.
EVENT_INCIDENTS_READ_ONE_BY_ONE = 20
# Service Bus polls every 5 minutes; a poll that holds the lease longer has failed and must be replaceable.
POLL_LEASE_DURATION = timedelta(minutes=4)
# A running poll renews its lease this often, so a lease not renewed for two of these has lost its holder.
POLL_LEASE_RENEW_EVERY = POLL_LEASE_DURATION / 4


@dataclass(frozen=True, slots=True)
class Monitor:
    """What the poll and the event handler need: readers, the state store, and how to judge."""

    readers: Readers
    store: StateStore
    thresholds: Thresholds
    instance: str  # this process's name in the poll lease
    subscriptions: Sequence[str] | None = None
    concurrency: int = 32
    # Releases the SDK clients, the credential and the store (for tests and `serve`; Functions workers never do).
    close: Callable[[], Awaitable[None]] | None = None
    # Incidents and their notices; None: judged and recorded, never alerted (`keyhealth check`).
    alerting: Alerting | None = None
    sinks: Mapping[str, AlertSink] = dataclasses.field(default_factory=dict)
    # Rotate / recover / unpin behind guard rails; acts only when its policy's mode is not off.
    remediation: Remediation | None = None
    # Events for one key inside a short window share a re-read; None: every event re-reads.
    coalescer: EventCoalescer | None = None


async def record_judgements(
    monitor: Monitor,
    reports: Sequence[NamespaceReport],
    *,
    now: datetime,
    stored: Mapping[str, StateSummary],
    rewrite: Collection[str] = (),
) -> tuple[str, ...]:
    """Store each namespace's judgement that says something new; returns the ids whose verdict changed.

    `stored` summarises the stored states by key (what list_namespace_summaries or summaries_for_key read,
    without documents). A judgement that says what is stored already is not written again (unless its
    namespace id is in `rewrite`: written since `stored` was read): the last complete poll's mark says it
    still held then. States are made and written RECORD_BATCH at a time, so
    a 100,000-namespace poll never holds every document at once; a batch is made while the one before is
    written, so the store's round trips overlap the making (a first poll on Table Storage writes them all).
    """
    changed: list[str] = []
    writing: asyncio.Future[list[str]] | None = None
    try:
        for start in range(0, len(reports), RECORD_BATCH):
            news = []
            for made, judged in enumerate(reports[start : start + RECORD_BATCH]):
                if writing is not None and made % MADE_BETWEEN_YIELDS == 0:
                    await asyncio.sleep(0)  # the batch being written sends its next requests and reads answers
                state = NamespaceState.of(judged.prediction.namespace, namespace_document(judged), evaluated_at=now)
                before = stored.get(state.key)
                if before is None or before.verdict != state.verdict:
                    changed.append(state.id)
                if before is None or before.digest != state.digest or (rewrite and state.id in rewrite):
                    news.append(state)
            if writing is not None:
                await writing
                writing = None
            if news:
                writing = asyncio.ensure_future(monitor.store.put_namespace_states(news, previous=stored))
        if writing is not None:
            await writing
            writing = None
    finally:
        if writing is not None:
            # Left to finish, never cut off: a batch writes its states before their index entries.
            await asyncio.wait({writing})
            if not writing.cancelled():
                writing.exception()  # taken, so asyncio does not warn: the error already raising is the one told
    return tuple(changed)


async def remediate_report(
    monitor: Monitor, report: FleetReport, snapshot: Snapshot, *, now: datetime
) -> list[Outcome]:
    if monitor.remediation is None or monitor.remediation.policy.mode is Mode.OFF:
        return []
    return await remediate(
        monitor.remediation,
        monitor.store,
        monitor.alerting,
        report.namespaces,
        World(snapshot),
        now=now,
        holder=monitor.instance,
    )


def key_tags_of(snapshot: Snapshot) -> dict[KeyId, Mapping[str, str]]:
    return {key.id: key.tags for key in snapshot.keys if key.tags}

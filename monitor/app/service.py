"""Use cases: read the fleet into a snapshot, then predict and judge it (the same path for check and the poll)."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from monitor.app.alerting import (
    Alerting,
    AlertPolicy,
    DeliveryReport,
    deliver,
    queue_watchdog,
    raise_alerts,
    resolve_removed,
)
from monitor.app.coalescing import EventCoalescer, Target, target_of
from monitor.app.leases import LeaseKeeper
from monitor.app.ports import AccessReader, AlertSink, InventoryReader, KeyReader
from monitor.app.remediation import Outcome, Remediation, remediate
from monitor.app.state import EVENT_DEDUPE_TTL, NamespaceState, StateStore
from monitor.app.telemetry import HEARTBEAT, READINGS, TRACER, count_event, count_poll
from monitor.domain.alert import Alert
from monitor.domain.errors import ReadError
from monitor.domain.findings import Thresholds
from monitor.domain.fleet import FleetReport, evaluate
from monitor.domain.model import (
    BlindScope,
    BlindSpot,
    Key,
    KeyId,
    Namespace,
    Scenario,
    Snapshot,
    Vault,
    key_id_of_url,
    key_url,
    name_id,
    vault_id,
)
from monitor.domain.remediation import Mode
from monitor.domain.scenario import parse_scenario, scenario_document
from monitor.domain.usability import World
from monitor.formats.events import KeyVaultEvent, KeyVaultEventType
from monitor.formats.render import namespace_document

ProgressCallback = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True, slots=True)
class Readers:
    """The three reading ports a fleet scan needs."""

    inventory: InventoryReader
    keys: KeyReader
    access: AccessReader


@dataclass(frozen=True, slots=True)
class _WantedKey:
    vault_uri: str
    name: str
    pinned: frozenset[str]


def _ignore_progress(stage: str, done: int, total: int) -> None:
    del stage, done, total


async def list_fleet(
    readers: Readers, *, subscriptions: Sequence[str] | None = None
) -> tuple[list[Namespace], list[str], list[BlindSpot]]:
    """Every CMK namespace of the subscriptions (all visible ones when None), the subscriptions read,
    and the subscriptions that could not be listed."""
    if subscriptions is None:
        try:
            subscriptions = await readers.inventory.list_subscriptions()
        except ReadError as failure:
            return [], [], [BlindSpot(BlindScope.SUBSCRIPTION, "*", failure.reason)]
    listing = await readers.inventory.list_namespaces_in(subscriptions)
    blind = [BlindSpot(BlindScope.SUBSCRIPTION, sub, reason) for sub, reason in listing.blind.items()]
    return listing.namespaces, list(subscriptions), blind


async def read_snapshot(
    readers: Readers,
    *,
    subscriptions: Sequence[str] | None = None,
    concurrency: int = 32,
    progress: ProgressCallback = _ignore_progress,
) -> Snapshot:
    """Read every CMK namespace, the vaults and keys they list, and who may use them.

    Never raises for what it could not read: each such thing becomes a BlindSpot in the snapshot.
    Each distinct key is read once, however many namespaces list it.
    """
    namespaces, read_subscriptions, blind = await list_fleet(readers, subscriptions=subscriptions)
    progress("namespaces", len(namespaces), len(namespaces))
    snapshot = await read_keys_of(
        readers, namespaces, subscriptions=read_subscriptions, concurrency=concurrency, progress=progress
    )
    return dataclasses.replace(snapshot, blind=(*blind, *snapshot.blind))


async def read_keys_of(
    readers: Readers,
    namespaces: Sequence[Namespace],
    *,
    subscriptions: Sequence[str],
    concurrency: int = 32,
    progress: ProgressCallback = _ignore_progress,
) -> Snapshot:
    """The snapshot of `namespaces`: the vaults and keys they list, read now (blind spots included)."""
    blind: list[BlindSpot] = []
    vault_uris: dict[str, str] = {}
    wanted: dict[KeyId, _WantedKey] = {}
    for namespace in namespaces:
        for ref in namespace.keys:
            vault_uris.setdefault(vault_id(ref.vault), ref.vault)
            entry = wanted.get(ref.key_id) or _WantedKey(ref.vault, ref.name, frozenset())
            if ref.version:
                entry = dataclasses.replace(entry, pinned=entry.pinned | {ref.version})
            wanted[ref.key_id] = entry

    vault_reading = await readers.access.read_vaults(list(vault_uris.values()), subscriptions=subscriptions)
    vaults: list[Vault] = []
    for vid, uri in vault_uris.items():
        if vid in vault_reading.found:
            vaults.append(vault_reading.found[vid])
        else:
            # Listed so the snapshot stays well formed; the blind spot makes it unknown, not a default.
            vaults.append(Vault(uri=uri))
            blind.append(BlindSpot(BlindScope.VAULT, uri, vault_reading.blind.get(vid, "not read")))
    deleted_vaults = {vid for vid, vault in vault_reading.found.items() if vault.deleted}

    # A deleted vault's data plane is unreachable and its keys unusable anyway: do not ask.
    to_read = [(key_id, entry) for key_id, entry in wanted.items() if key_id[0] not in deleted_vaults]
    semaphore = asyncio.Semaphore(concurrency)
    done = 0

    # Keys read in full by an earlier poll and unchanged since are confirmed in bulk (a listing page covers
    # many keys); a pinned version can change without its key changing, so those are always read.
    by_vault: dict[str, list[str]] = {}
    for _, entry in to_read:
        if not entry.pinned:
            by_vault.setdefault(entry.vault_uri, []).append(entry.name)

    async def revalidate(uri: str, names: list[str]) -> dict[str, Key]:
        async with semaphore:
            return await readers.keys.revalidate(uri, names)

    confirmed: dict[KeyId, Key] = {}
    listings = await asyncio.gather(*(revalidate(uri, names) for uri, names in by_vault.items()))
    for uri, found in zip(by_vault, listings, strict=True):
        confirmed.update(((vault_id(uri), name), key) for name, key in found.items())

    async def read(key_id: KeyId, entry: _WantedKey) -> Key | None:
        nonlocal done
        try:
            if key_id in confirmed:
                return confirmed[key_id]
            async with semaphore:
                return await readers.keys.get_key(entry.vault_uri, entry.name, pinned_versions=sorted(entry.pinned))
        finally:
            done += 1
            progress("keys", done, len(to_read))

    results = await asyncio.gather(*(read(key_id, entry) for key_id, entry in to_read), return_exceptions=True)
    keys: list[Key] = []
    for (key_id, entry), result in zip(to_read, results, strict=True):
        if isinstance(result, ReadError):
            blind.append(BlindSpot(BlindScope.KEY, key_url(entry.vault_uri, entry.name), result.reason))
        elif isinstance(result, BaseException):
            raise result
        elif result is not None:
            key_access = vault_reading.key_access.get(key_id[0], {}).get(name_id(entry.name))
            keys.append(dataclasses.replace(result, access=key_access) if key_access else result)
    return Snapshot(vaults=tuple(vaults), keys=tuple(keys), namespaces=tuple(namespaces), blind=tuple(blind))


async def check(
    readers: Readers,
    *,
    now: datetime,
    thresholds: Thresholds,
    subscriptions: Sequence[str] | None = None,
    concurrency: int = 32,
    progress: ProgressCallback = _ignore_progress,
) -> tuple[Scenario, FleetReport]:
    """One fleet scan now: read, then predict and judge. Returns the scenario it read and the report."""
    snapshot = await read_snapshot(readers, subscriptions=subscriptions, concurrency=concurrency, progress=progress)
    scenario = Scenario(now=now, snapshot=snapshot)
    return scenario, evaluate(scenario, thresholds)


# --- the poll and the event handler: read -> predict -> record ----------------------------------------

POLL_LEASE = "poll"
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


@dataclass(frozen=True, slots=True)
class PollResult:
    """One poll: whether this instance ran it, and what it judged."""

    ran: bool
    report: FleetReport | None = None
    changed: tuple[str, ...] = ()  # namespace ids whose status, window or worst finding moved
    removed: tuple[str, ...] = ()  # namespaces no longer in the fleet
    alerts: tuple[Alert, ...] = ()  # notices queued by this poll
    remediation: tuple[Outcome, ...] = ()  # what remediation decided, when it is on or dry-running

    def describe(self) -> str:
        """One log line saying how the poll went."""
        if not self.ran or self.report is None:
            return "keyhealth: another instance holds the poll lease"
        return (
            f"keyhealth: polled {len(self.report.namespaces)} namespaces; "
            f"changed {list(self.changed)}; removed {list(self.removed)}; alerts queued {len(self.alerts)}"
        )


class EventOutcome(enum.Enum):
    """What became of one event; counted by outcome."""

    EVALUATED = "evaluated"  # the namespaces listing its key (or vault) were re-read and re-judged
    DUPLICATE = "duplicate"  # its id was processed before (Event Grid delivers at least once): re-read anyway
    UNRELATED = "unrelated"  # a secret, a certificate, or a key no namespace lists
    NO_STATE = "no-state"  # nothing is known yet to relate it to: the next poll covers it
    IGNORED = "ignored"  # from a vault no namespace of the inventory uses: acknowledged, never read
    # Another event for the same key (or vault) moments ago re-reads it: now, or when its window ends.
    COALESCED = "coalesced"


@dataclass(frozen=True, slots=True)
class EventResult:
    outcome: EventOutcome
    namespaces: tuple[str, ...] = ()
    report: FleetReport | None = None
    alerts: tuple[Alert, ...] = ()
    remediation: tuple[Outcome, ...] = ()


def _verdict(document: Mapping[str, Any]) -> tuple[object, ...]:
    """What must move for a namespace's state to count as changed."""
    findings = document.get("findings") or []
    worst = max((f.get("severity") for f in findings if isinstance(f, Mapping)), default=None, key=str)
    return (document.get("status_now"), document.get("revoked_at_earliest"), document.get("revoked_by"), worst)


async def _record(
    monitor: Monitor,
    report: FleetReport,
    *,
    now: datetime,
    stored: Mapping[str, NamespaceState] | None = None,
) -> tuple[str, ...]:
    """Store each namespace's judgement; returns the ids whose verdict changed.

    `stored` is every stored state by NamespaceState.key (a poll reads them all in one go); without it
    each namespace's is read on its own (an event touches few).
    """
    states = [
        NamespaceState.of(n.prediction.namespace, namespace_document(n), evaluated_at=now) for n in report.namespaces
    ]
    changed = []
    for state in states:
        before = stored.get(state.key) if stored is not None else await monitor.store.get_namespace_state(state.id)
        if before is None or _verdict(before.document) != _verdict(state.document):
            changed.append(state.id)
    await monitor.store.put_namespace_states(states)
    return tuple(changed)


async def _read_fleet(monitor: Monitor, *, now: datetime) -> tuple[Scenario, FleetReport]:
    return await check(
        monitor.readers,
        now=now,
        thresholds=monitor.thresholds,
        subscriptions=monitor.subscriptions,
        concurrency=monitor.concurrency,
    )


async def poll(monitor: Monitor, *, now: datetime) -> PollResult:
    """`_poll`, counted and timed (keyhealth.polls, keyhealth.poll.duration); updates the fleet gauges."""
    started = time.monotonic()
    # The Azure SDK calls inside become child spans (azure-core tracing, enabled at the composition root).
    with TRACER.start_as_current_span("keyhealth.poll") as span:
        try:
            result = await _poll(monitor, now=now)
        except Exception:
            count_poll("failed", time.monotonic() - started)
            span.set_attribute("keyhealth.outcome", "failed")
            raise
        if not result.ran or result.report is None:
            count_poll("skipped")
            span.set_attribute("keyhealth.outcome", "skipped")
            # Another instance polls: the heartbeat gauge follows its mark (one small read).
            mark = await monitor.store.last_poll_completed()
            if mark is not None:
                HEARTBEAT.saw(mark.at)
            return result
        READINGS.record(result.report, whole_fleet=not result.report.fleet_blind)
        outcome = "blind" if result.report.fleet_blind else "ok"
        if outcome == "ok":
            HEARTBEAT.saw(now)
        count_poll(outcome, time.monotonic() - started)
        span.set_attributes(
            {
                "keyhealth.outcome": outcome,
                "keyhealth.namespaces": len(result.report.namespaces),
                "keyhealth.alerts": len(result.alerts),
            }
        )
        return result


async def _poll(monitor: Monitor, *, now: datetime) -> PollResult:
    """Mirror Service Bus's 5-minute poll: read the whole fleet, judge it, record it.

    Only the instance holding the poll lease runs it; the others return at once (ran=False).
    Namespaces of a subscription that could not be listed are kept as they were, not forgotten.
    """
    lease = await monitor.store.acquire_lease(POLL_LEASE, monitor.instance, POLL_LEASE_DURATION, now=now)
    if lease is None:
        return PollResult(ran=False)
    # A 100,000-namespace poll can outlast the lease: it is renewed in the background, and checked before each
    # write, so a poll that lost it (paused, cut off, taken over) records nothing beside the new holder's.
    keeper = LeaseKeeper(
        monitor.store, lease, POLL_LEASE_DURATION, acquired_at=now, renew_every=POLL_LEASE_RENEW_EVERY.total_seconds()
    )
    try:
        async with keeper.renewing():
            return await _poll_holding(monitor, keeper, now=now)
    finally:
        await keeper.release()


async def _poll_holding(monitor: Monitor, keeper: LeaseKeeper, *, now: datetime) -> PollResult:
    scenario, report = await _read_fleet(monitor, now=now)
    if report.fleet_blind:
        scenario, report = await _judge_unlisted(monitor, scenario, report)
    if not await keeper.hold(force=True):
        return PollResult(ran=False)
    stored = {state.key: state for state in await monitor.store.list_namespace_states()}
    changed = await _record(monitor, report, now=now, stored=stored)
    removed: list[str] = []
    if not report.fleet_blind:
        seen = {n.prediction.namespace.id.lower() for n in report.namespaces}
        for key, state in stored.items():
            if key not in seen and await monitor.store.delete_namespace_state(state.id):
                removed.append(state.id)
    alerts: list[Alert] = []
    if monitor.alerting is not None and await keeper.hold():
        known = {i.key: i for i in await monitor.store.list_incidents()}
        alerts += await raise_alerts(
            monitor.alerting, report.namespaces, key_tags=_key_tags(scenario.snapshot), now=now, known=known
        )
        alerts += await resolve_removed(monitor.alerting, removed, now=now)
    outcomes = await _remediate(monitor, report, scenario.snapshot, now=now) if await keeper.hold() else []
    if not await keeper.hold():
        return PollResult(ran=False)
    await monitor.store.put_snapshot(scenario_document(scenario), taken_at=now)
    await monitor.store.purge_processed_events(before=now - EVENT_DEDUPE_TTL)
    if not report.fleet_blind:
        # Last: the mark says a whole poll was judged and stored, which a blind or failed one was not.
        await monitor.store.record_poll_completed(monitor.instance, at=now)
        if monitor.alerting is not None:  # the optional dead-man's switch: "still polling", now and then
            watchdog = await queue_watchdog(monitor.alerting, namespaces=len(report.namespaces), now=now)
            alerts += [watchdog] if watchdog is not None else []
    return PollResult(
        ran=True,
        report=report,
        changed=changed,
        removed=tuple(removed),
        alerts=tuple(alerts),
        remediation=tuple(outcomes),
    )


async def _judge_unlisted(monitor: Monitor, scenario: Scenario, report: FleetReport) -> tuple[Scenario, FleetReport]:
    """Add the namespaces remembered from subscriptions that could not be listed now, judged unknown.

    Kept as they were, their last verdict would claim what the monitor cannot see now (a stale healthy, or a
    stale revoked) and nothing would say so; unknown, each gets a monitor-blind finding and its blind incident
    (its other incidents are held). They stay in the stored snapshot, so a longer outage keeps them unknown.
    """
    stored = await monitor.store.get_snapshot()
    if stored is None:
        return scenario, report
    remembered, _ = parse_scenario(stored.document)
    reasons = {spot.target.lower(): spot.reason for spot in report.fleet_blind}
    listed = {namespace.id.lower() for namespace in scenario.snapshot.namespaces}
    unlisted: list[Namespace] = []
    blind: list[BlindSpot] = []
    for namespace in remembered.snapshot.namespaces:
        subscription = namespace.id.split("/")[2] if namespace.id.count("/") > 2 else ""
        reason = reasons.get(subscription.lower(), reasons.get("*"))
        if reason is None or namespace.id.lower() in listed:
            continue
        unlisted.append(namespace)
        what = f"the namespaces of subscription {subscription}" if subscription.lower() in reasons else "subscriptions"
        blind.append(BlindSpot(BlindScope.NAMESPACE, namespace.id, f"{what} could not be listed: {reason}"))
    if not unlisted:
        return scenario, report
    # The vaults only they list were not read either: kept as remembered, so the stored snapshot stays whole,
    # and blind, so nothing is concluded from what they were.
    present = {vault_id(vault.uri) for vault in scenario.snapshot.vaults}
    wanted = {vault_id(ref.vault) for namespace in unlisted for ref in namespace.keys}
    vaults = [vault for vault in remembered.snapshot.vaults if vault.id in wanted - present]
    unread = "not read: only namespaces whose subscription could not be listed use it"
    blind += [BlindSpot(BlindScope.VAULT, vault.uri, unread) for vault in vaults]
    snapshot = dataclasses.replace(
        scenario.snapshot,
        vaults=(*scenario.snapshot.vaults, *vaults),
        namespaces=(*scenario.snapshot.namespaces, *unlisted),
        blind=(*scenario.snapshot.blind, *blind),
    )
    scenario = dataclasses.replace(scenario, snapshot=snapshot)
    return scenario, evaluate(scenario, monitor.thresholds)


async def handle_events(
    monitor: Monitor, events: Sequence[KeyVaultEvent], *, now: datetime
) -> list[EventResult | Exception]:
    """Handle a delivery's events, in order of their targets' first event: per key (or vault) one re-read,
    however many events name it; inside the monitor's coalescing window none now and one at its end.

    Each event gets its own result: the re-read's, `coalesced` for the others, or the exception the re-read
    raised (every event of that target then failed: Event Grid retries them).
    """
    results: list[EventResult | Exception | None] = [None] * len(events)
    groups: dict[Target | int, list[int]] = {}
    for index, event in enumerate(events):
        if event.kind is None or event.vault_uri is None:
            groups[index] = [index]  # about no key: nothing to share
        else:
            groups.setdefault(target_of(event.vault_uri, event.object_name), []).append(index)
    coalescer = monitor.coalescer
    for target, indexes in groups.items():
        first = events[indexes[0]]
        if isinstance(target, int) or coalescer is None or coalescer.admit(target):
            try:
                results[indexes[0]] = await handle_event(monitor, first, now=now)
            except Exception as error:
                if coalescer is not None and not isinstance(target, int):
                    coalescer.forget(target)  # nothing was read: the next event (Event Grid's retry) reads again
                for index in indexes:
                    results[index] = error
                continue
            followers = indexes[1:]  # arrived with it: the read that just ran saw whatever they report
        else:
            followers = indexes

            async def trailing(event: object, at: datetime) -> object:
                assert isinstance(event, KeyVaultEvent)  # noqa: S101 - what defer was given
                return await handle_event(monitor, event, now=at)

            coalescer.defer(target, events[indexes[-1]], trailing, now=now)
        for index in followers:
            event = events[index]
            count_event(event.kind.value if event.kind is not None else "other", EventOutcome.COALESCED.value)
            results[index] = EventResult(EventOutcome.COALESCED)
    return [result for result in results if result is not None]


async def handle_event(monitor: Monitor, event: KeyVaultEvent, *, now: datetime) -> EventResult:
    """`_handle_event`, counted and timed (keyhealth.events, keyhealth.event.duration); updates the gauges."""
    started = time.monotonic()
    kind = event.kind.value if event.kind is not None else "other"  # bounded: never the raw type text
    with TRACER.start_as_current_span("keyhealth.event", attributes={"keyhealth.event_type": kind}) as span:
        try:
            result = await _handle_event(monitor, event, now=now)
        except Exception:
            count_event(kind, "failed", time.monotonic() - started)
            span.set_attribute("keyhealth.outcome", "failed")
            raise
        if result.report is not None:
            READINGS.record(result.report, whole_fleet=False)
        count_event(kind, result.outcome.value, time.monotonic() - started)
        span.set_attributes({"keyhealth.outcome": result.outcome.value, "keyhealth.namespaces": len(result.namespaces)})
        return result


async def _stranger_or_no_state(monitor: Monitor) -> EventOutcome:
    """For an event from a vault no stored namespace uses: ignored (never read) once a poll has stored the
    inventory, so a stranger's vault costs nothing; before that, nothing is known yet (no-state)."""
    if await monitor.store.last_poll_completed() is None and await monitor.store.get_snapshot() is None:
        return EventOutcome.NO_STATE
    return EventOutcome.IGNORED


async def _handle_event(monitor: Monitor, event: KeyVaultEvent, *, now: datetime) -> EventResult:
    """React to one Key Vault event: re-read and re-judge the namespaces that list its key (or vault).

    The event's own payload is never trusted for state (Event Grid delivers at least once and out of
    order): it only says where to look, and whatever is read now wins. Re-reading is idempotent, so the
    id is recorded only after the work succeeds: a failure is retried by Event Grid, and a redelivery
    after success is re-read harmlessly and counted as a duplicate.
    """
    if event.kind is None or event.vault_uri is None:
        return EventResult(EventOutcome.UNRELATED)
    if event.kind is KeyVaultEventType.VAULT_ACCESS_POLICY_CHANGED or not event.object_name:
        affected = await monitor.store.namespaces_for_vault(event.vault_uri)
        if not affected:
            return EventResult(await _stranger_or_no_state(monitor))
    else:
        affected = await monitor.store.namespaces_for_key(event.vault_uri, event.object_name)
        if not affected:
            if await monitor.store.namespaces_for_vault(event.vault_uri):
                return EventResult(EventOutcome.UNRELATED)
            return EventResult(await _stranger_or_no_state(monitor))
    stored = await monitor.store.get_snapshot()
    if stored is None:
        return EventResult(EventOutcome.NO_STATE)
    known, _ = parse_scenario(stored.document)
    wanted = {namespace_id.lower() for namespace_id in affected}
    namespaces = [n for n in known.snapshot.namespaces if n.id.lower() in wanted]
    subscriptions = sorted({n.id.split("/")[2] for n in known.snapshot.namespaces if n.id.count("/") > 2})
    snapshot = await _reread_for_event(monitor, known.snapshot, namespaces, event, subscriptions)
    report = evaluate(Scenario(now=now, snapshot=snapshot), monitor.thresholds)
    await _record(monitor, report, now=now)
    alerts: list[Alert] = []
    if monitor.alerting is not None:
        # A shared key's event touches many namespaces: one read of the incidents beats one read per condition.
        incidents = None
        if len(report.namespaces) > EVENT_INCIDENTS_READ_ONE_BY_ONE:
            incidents = {incident.key: incident for incident in await monitor.store.list_incidents()}
        alerts = await raise_alerts(
            monitor.alerting, report.namespaces, key_tags=_key_tags(snapshot), now=now, known=incidents
        )
    outcomes = await _remediate(monitor, report, snapshot, now=now)
    first = await monitor.store.mark_event_processed(event.id, at=now)
    outcome = EventOutcome.EVALUATED if first else EventOutcome.DUPLICATE
    return EventResult(outcome, tuple(n.id for n in namespaces), report, tuple(alerts), tuple(outcomes))


async def _reread_for_event(
    monitor: Monitor,
    known: Snapshot,
    namespaces: Sequence[Namespace],
    event: KeyVaultEvent,
    subscriptions: Sequence[str],
) -> Snapshot:
    """The snapshot `namespaces` are judged on after `event`: what the event names read now (the key, or the
    vault's access for an access-policy change), everything else as the last poll read it.

    One read however many namespaces share the key: a thousand namespaces of one key cost one request,
    not a thousand keys' worth. The rest is at most one poll period old, which is Service Bus's own pace.
    """
    vault_uri = event.vault_uri or ""  # the caller routed the event by it: never empty here
    vault = vault_id(vault_uri)
    needed_vaults = {vault_id(ref.vault) for n in namespaces for ref in n.keys}
    needed_keys = {ref.key_id for n in namespaces for ref in n.keys}
    vaults = {vault_id(v.uri): v for v in known.vaults if vault_id(v.uri) in needed_vaults}
    keys = {(vault_id(k.vault), name_id(k.name)): k for k in known.keys}
    keys = {key_id: k for key_id, k in keys.items() if key_id in needed_keys}
    listed_here = {n.id.lower() for n in namespaces}
    blind = [
        b
        for b in known.blind
        if (b.scope is BlindScope.VAULT and vault_id(b.target) in needed_vaults)
        or (b.scope is BlindScope.KEY and key_id_of_url(b.target) in needed_keys)
        # A namespace whose subscription could not be listed stays unknown: its key list may be stale.
        or (b.scope is BlindScope.NAMESPACE and b.target.lower() in listed_here)
    ]
    if event.kind is KeyVaultEventType.VAULT_ACCESS_POLICY_CHANGED or not event.object_name:
        reading = await monitor.readers.access.read_vaults([vault_uri], subscriptions=subscriptions)
        blind = [b for b in blind if not (b.scope is BlindScope.VAULT and vault_id(b.target) == vault)]
        if vault in reading.found:
            vaults[vault] = reading.found[vault]
            key_access = reading.key_access.get(vault, {})
            for key_id, key in list(keys.items()):
                if key_id[0] == vault:
                    keys[key_id] = dataclasses.replace(key, access=key_access.get(key_id[1], {}))
        else:
            blind.append(BlindSpot(BlindScope.VAULT, vault_uri, reading.blind.get(vault, "not read")))
    else:
        key_id = (vault, name_id(event.object_name))
        pinned = sorted({ref.version for n in namespaces for ref in n.keys if ref.key_id == key_id and ref.version})
        url = key_url(vault_uri, event.object_name)
        blind = [b for b in blind if not (b.scope is BlindScope.KEY and key_id_of_url(b.target) == key_id)]
        previous = keys.pop(key_id, None)
        try:
            fresh = await monitor.readers.keys.get_key(vault_uri, event.object_name, pinned_versions=pinned)
        except ReadError as failure:
            blind.append(BlindSpot(BlindScope.KEY, url, failure.reason))
        else:
            if fresh is not None:  # None: it no longer exists, which the judgement reports
                # Who may use it at the key's own scope (RBAC) did not change with the key.
                keys[key_id] = dataclasses.replace(fresh, access=previous.access) if previous else fresh
    return Snapshot(
        vaults=tuple(vaults.values()), keys=tuple(keys.values()), namespaces=tuple(namespaces), blind=tuple(blind)
    )


async def _remediate(monitor: Monitor, report: FleetReport, snapshot: Snapshot, *, now: datetime) -> list[Outcome]:
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


async def remediate_once(
    monitor: Monitor, *, now: datetime, dry_run: bool, namespaces: Sequence[str] = ()
) -> tuple[FleetReport, list[Outcome]]:
    """`keyhealth remediate`: read the fleet, plan, and act as the settings allow (nothing with dry_run).

    `namespaces` (names or ARM ids, any case) narrows it. Raises StateStoreError.
    """
    if monitor.remediation is None:
        raise ValueError("this monitor has no remediation configured")
    scenario, report = await _read_fleet(monitor, now=now)
    wanted = {n.lower() for n in namespaces}
    chosen = [
        n
        for n in report.namespaces
        if not wanted or n.prediction.namespace.name.lower() in wanted or n.prediction.namespace.id.lower() in wanted
    ]
    outcomes = await remediate(
        monitor.remediation,
        monitor.store,
        monitor.alerting,
        chosen,
        World(scenario.snapshot),
        now=now,
        holder=monitor.instance,
        dry_run=dry_run,
    )
    return report, outcomes


def _key_tags(snapshot: Snapshot) -> dict[KeyId, Mapping[str, str]]:
    return {key.id: key.tags for key in snapshot.keys if key.tags}


async def deliver_alerts(monitor: Monitor, *, now: datetime) -> DeliveryReport:
    """Send the queued alerts that are due (only one instance at a time does). Raises StateStoreError."""
    policy = monitor.alerting.policy if monitor.alerting is not None else AlertPolicy()
    # A holder of its own per drain: two drains in one process (a timer and a wake-up) must exclude each other too.
    holder = f"{monitor.instance}:{uuid.uuid4().hex[:12]}"
    return await deliver(monitor.store, monitor.sinks, now=now, policy=policy, holder=holder)


async def status_document(store: StateStore, namespace: str | None) -> tuple[int, dict[str, Any]]:
    """The fleet's last known state, or one namespace's (by name or ARM id), as (HTTP status, JSON body).

    The one implementation behind the status routes of both hosts (Functions and `keyhealth serve`).
    """
    states = await store.list_namespace_states()
    if namespace is None:
        return 200, {
            "namespaces": [{**dict(state.document), "evaluated_at": state.evaluated_at.isoformat()} for state in states]
        }
    wanted = namespace.lower()
    found = next((s for s in states if s.key == wanted or (s.name or "").lower() == wanted), None)
    if found is None:
        return 404, {"error": f"no namespace {namespace!r} is known"}
    return 200, {**dict(found.document), "evaluated_at": found.evaluated_at.isoformat()}

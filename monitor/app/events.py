"""Key Vault events: re-read and re-judge only the namespaces an event names, coalesced per key, and say
what became of each event (evaluated, coalesced, unrelated, ignored, no-state, duplicate)."""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from monitor.app.alerting import raise_alerts
from monitor.app.coalescing import Target, target_of
from monitor.app.monitor import (
    EVENT_INCIDENTS_READ_ONE_BY_ONE,
    Monitor,
    key_tags_of,
    record_judgements,
    remediate_report,
)
from monitor.app.remediation import Outcome
from monitor.app.state import namespace_key
from monitor.app.telemetry import READINGS, TRACER, count_event
from monitor.domain.alert import Alert
from monitor.domain.errors import ReadError
from monitor.domain.fleet import FleetReport, evaluate
from monitor.domain.model import (
    BlindScope,
    BlindSpot,
    Namespace,
    Scenario,
    Snapshot,
    key_id_of_url,
    key_url,
    name_id,
    vault_id,
)
from monitor.domain.scenario import parse_scenario, scenario_subset
from monitor.formats.events import KeyVaultEvent, KeyVaultEventType


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
        summaries = await monitor.store.summaries_for_vault(event.vault_uri)
        if not summaries:
            return EventResult(await _stranger_or_no_state(monitor))
    else:
        summaries = await monitor.store.summaries_for_key(event.vault_uri, event.object_name)
        if not summaries:
            if await monitor.store.namespaces_for_vault(event.vault_uri):
                return EventResult(EventOutcome.UNRELATED)
            return EventResult(await _stranger_or_no_state(monitor))
    stored = await monitor.store.get_snapshot()
    if stored is None:
        return EventResult(EventOutcome.NO_STATE)
    wanted = {summary.key for summary in summaries}
    # Only the namespaces the event touches are parsed: a thousand of a 100,000-namespace snapshot.
    known, _ = parse_scenario(scenario_subset(stored.document, wanted))
    namespaces = [n for n in known.snapshot.namespaces if namespace_key(n.id) in wanted]
    subscriptions = _subscriptions_of(stored.document)
    snapshot = await _reread_for_event(monitor, known.snapshot, namespaces, event, subscriptions)
    report = evaluate(Scenario(now=now, snapshot=snapshot), monitor.thresholds)
    # The summaries just read say what is stored: only what changed is written, conditioned on their versions.
    await record_judgements(monitor, report.namespaces, now=now, stored={summary.key: summary for summary in summaries})
    alerts: list[Alert] = []
    if monitor.alerting is not None:
        # A shared key's event touches many namespaces: one read of the incidents beats one read per condition.
        incidents = None
        if len(report.namespaces) > EVENT_INCIDENTS_READ_ONE_BY_ONE:
            incidents = {incident.key: incident for incident in await monitor.store.list_incidents()}
        alerts = await raise_alerts(
            monitor.alerting, report.namespaces, key_tags=key_tags_of(snapshot), now=now, known=incidents
        )
    outcomes = await remediate_report(monitor, report, snapshot, now=now)
    first = await monitor.store.mark_event_processed(event.id, at=now)
    outcome = EventOutcome.EVALUATED if first else EventOutcome.DUPLICATE
    return EventResult(outcome, tuple(n.id for n in namespaces), report, tuple(alerts), tuple(outcomes))


def _subscriptions_of(document: Mapping[str, object]) -> list[str]:
    """The subscriptions of every namespace the stored snapshot lists (where vaults are looked for)."""
    namespaces = document.get("namespaces")
    ids = [n.get("id") for n in namespaces if isinstance(n, Mapping)] if isinstance(namespaces, list) else []
    return sorted({i.split("/")[2] for i in ids if isinstance(i, str) and i.count("/") > 2})


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

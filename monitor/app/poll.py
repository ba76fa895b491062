"""The poll: under the poll lease (renewed, fenced), read the whole fleet, judge it, record it, raise and
resolve incidents, remediate; plus the delivery of queued notices and one-off remediation."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from monitor.app.alerting import AlertPolicy, queue_watchdog, raise_alerts, resolve_removed
from monitor.app.delivery import DeliveryReport, deliver
from monitor.app.leases import LeaseKeeper
from monitor.app.monitor import (
    POLL_LEASE,
    POLL_LEASE_DURATION,
    POLL_LEASE_RENEW_EVERY,
    Monitor,
    key_tags_of,
    record_judgements,
    remediate_report,
)
from monitor.app.reading import JudgedCallback, check
from monitor.app.remediation import Outcome, remediate
from monitor.app.state import EVENT_DEDUPE_TTL, StateSummary, key_ids_of, namespace_key
from monitor.app.telemetry import HEARTBEAT, READINGS, TRACER, count_poll
from monitor.domain.alert import Alert
from monitor.domain.errors import StateStoreError
from monitor.domain.fleet import FleetReport, JudgedAhead, NamespaceReport, evaluate
from monitor.domain.model import BlindScope, BlindSpot, Namespace, Scenario, vault_id
from monitor.domain.observed import for_storage
from monitor.domain.scenario import parse_scenario
from monitor.domain.scenario_writing import scenario_document
from monitor.domain.world import World

log = logging.getLogger("keyhealth.poll")


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


async def read_fleet(
    monitor: Monitor,
    *,
    now: datetime,
    listed: Callable[[Sequence[Namespace]], None] | None = None,
    judged: JudgedCallback | None = None,
) -> tuple[Scenario, FleetReport]:
    return await check(
        monitor.readers,
        now=now,
        thresholds=monitor.thresholds,
        subscriptions=monitor.subscriptions,
        concurrency=monitor.concurrency,
        listed=listed,
        judged=judged,
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


async def _recall_key_records(monitor: Monitor) -> None:
    """Take in what earlier polls, by any instance, learnt of the keys: a poll on a fresh or another instance
    then confirms unchanged keys from the listings as cheaply as the instance that read them. Only a cache:
    a store that cannot answer costs full reads, not the poll."""
    try:
        records = await monitor.store.list_key_records()
    except StateStoreError as error:
        log.warning("keyhealth: key records not read (%s); keys are read in full", error)
        return
    monitor.readers.keys.recall(records)
    if monitor.readers.pairings is not None:  # Geo-DR pairings share the records' store, by their own ids
        monitor.readers.pairings.recall(records)


async def _share_key_records(monitor: Monitor, *, now: datetime) -> None:
    records = monitor.readers.keys.take_changed_records()
    if monitor.readers.pairings is not None:
        await monitor.readers.pairings.settle()  # the pairings read beside this poll, for the next
        records.update(monitor.readers.pairings.take_changed_records())
    if not records:
        return
    try:
        await monitor.store.put_key_records(records, written_at=now)
    except StateStoreError as error:
        log.warning("keyhealth: key records not stored (%s); other instances read those keys in full", error)


async def _index_ahead(
    monitor: Monitor, namespaces: Sequence[Namespace], summaries: asyncio.Future[list[StateSummary]]
) -> None:
    """Let the store index the namespaces it holds no state of yet while their keys are read (a first poll's
    whole fleet). Only a head start: a store that fails here indexes them with their states."""
    stored = {summary.key for summary in await summaries}
    new = [(n.id, key_ids_of(n.keys)) for n in namespaces if namespace_key(n.id) not in stored]
    if not new:
        return
    try:
        await monitor.store.index_new_namespaces(new)
    except StateStoreError as error:
        log.warning("keyhealth: new namespaces not indexed ahead (%s); they are with their states", error)


def _to_store(scenario: Scenario) -> Scenario:
    """The scenario as the snapshot keeps it: each observation cut down to what an event's re-judging needs
    (the phase, the latest polls, each key's last success and failure), half what the poll read."""
    namespaces = scenario.snapshot.namespaces
    if not any(n.observed is not None for n in namespaces):
        return scenario
    kept = tuple(
        dataclasses.replace(n, observed=for_storage(n.observed)) if n.observed is not None else n for n in namespaces
    )
    return dataclasses.replace(scenario, snapshot=dataclasses.replace(scenario.snapshot, namespaces=kept))


async def _poll_holding(monitor: Monitor, keeper: LeaseKeeper, *, now: datetime) -> PollResult:
    await _recall_key_records(monitor)
    # What is stored is read while the fleet is: the store's round trips overlap Azure's.
    summaries = asyncio.ensure_future(monitor.store.list_namespace_summaries())
    ahead: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ahead.set_result(None)  # replaced once the fleet is listed

    def listed(namespaces: Sequence[Namespace]) -> None:
        nonlocal ahead
        ahead = asyncio.ensure_future(_index_ahead(monitor, namespaces, summaries))

    stored_by_key: dict[str, StateSummary] | None = None

    async def stored_states() -> dict[str, StateSummary]:
        nonlocal stored_by_key
        if stored_by_key is None:
            stored_by_key = {summary.key: summary for summary in await summaries}
        return stored_by_key

    # Pages judged while the inventory is still read are recorded then (a steady poll waits on Resource Graph).
    recorded: dict[str, NamespaceReport] = {}
    changed_ahead: list[str] = []

    async def record_ahead(reports: Sequence[NamespaceReport]) -> None:
        if not await keeper.hold(force=not recorded):
            return  # the final check below says so
        changed_ahead.extend(await record_judgements(monitor, reports, now=now, stored=await stored_states()))
        recorded.update((report.prediction.namespace.id, report) for report in reports)

    try:
        scenario, report = await read_fleet(monitor, now=now, listed=listed, judged=record_ahead)
        if report.fleet_blind:
            scenario, report = await _judge_unlisted(monitor, scenario, report)
        stored = await stored_states()
        await ahead
    finally:
        for work in (summaries, ahead):
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, StateStoreError):
                    await work
    if not await keeper.hold(force=True):
        return PollResult(ran=False)
    # The report keeps the very reports recorded ahead that still hold; one judged again is written again.
    rest = [n for n in report.namespaces if recorded.get(n.prediction.namespace.id) is not n]
    again = {n.prediction.namespace.id for n in rest if n.prediction.namespace.id in recorded}
    changed_now = await record_judgements(monitor, rest, now=now, stored=stored, rewrite=again)
    moved = {*(i for i in changed_ahead if i not in again), *changed_now}
    changed = tuple(i for n in report.namespaces if (i := n.prediction.namespace.id) in moved)
    removed: list[str] = []
    if not report.fleet_blind:
        seen = {n.prediction.namespace.id.lower() for n in report.namespaces}
        # A page recorded ahead of a listing that then started again (over ARM) may name one it no longer has.
        unlisted = [i for i in recorded if namespace_key(i) not in seen and namespace_key(i) not in stored]
        for namespace_id in [*(state.id for key, state in stored.items() if key not in seen), *unlisted]:
            if await monitor.store.delete_namespace_state(namespace_id):
                removed.append(namespace_id)
    alerts: list[Alert] = []
    if monitor.alerting is not None and await keeper.hold():
        known = {i.key: i for i in await monitor.store.list_incidents()}
        alerts += await raise_alerts(
            monitor.alerting, report.namespaces, key_tags=key_tags_of(scenario.snapshot), now=now, known=known
        )
        alerts += await resolve_removed(monitor.alerting, removed, now=now)
    outcomes = await remediate_report(monitor, report, scenario.snapshot, now=now) if await keeper.hold() else []
    if not await keeper.hold():
        return PollResult(ran=False)
    await monitor.store.put_snapshot(scenario_document(_to_store(scenario), lazy=True), taken_at=now)
    await _share_key_records(monitor, now=now)
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
    # What the listed namespaces rest on is unchanged: their reports (recorded ahead, perhaps) are kept.
    judged = JudgedAhead(
        now=report.now,
        horizon=report.horizon,
        basis=scenario.snapshot,
        reports={n.prediction.namespace.id: n for n in report.namespaces},
    )
    scenario = dataclasses.replace(scenario, snapshot=snapshot)
    return scenario, evaluate(scenario, monitor.thresholds, ahead=judged)


async def remediate_once(
    monitor: Monitor, *, now: datetime, dry_run: bool, namespaces: Sequence[str] = ()
) -> tuple[FleetReport, list[Outcome]]:
    """`keyhealth remediate`: read the fleet, plan, and act as the settings allow (nothing with dry_run).

    `namespaces` (names or ARM ids, any case) narrows it. Raises StateStoreError.
    """
    if monitor.remediation is None:
        raise ValueError("this monitor has no remediation configured")
    scenario, report = await read_fleet(monitor, now=now)
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


async def deliver_alerts(monitor: Monitor, *, now: datetime) -> DeliveryReport:
    """Send the queued alerts that are due (only one instance at a time does). Raises StateStoreError."""
    policy = monitor.alerting.policy if monitor.alerting is not None else AlertPolicy()
    # A holder of its own per drain: two drains in one process (a timer and a wake-up) must exclude each other too.
    holder = f"{monitor.instance}:{uuid.uuid4().hex[:12]}"
    return await deliver(monitor.store, monitor.sinks, now=now, policy=policy, holder=holder)

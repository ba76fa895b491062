"""Alerting: judged namespaces become incidents (raised, escalated, resolved) and their notices are queued
per sink in the outbox, in one transaction with the incident."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from monitor.app.alert_routes import Router
from monitor.app.state import Incident, OutboxEntry, StateStore, namespace_key, notice_id, outbox_id
from monitor.domain.alert import (
    WATCHDOG_ID,
    Alert,
    AlertAction,
    NoticeContext,
    alert_for,
    alert_for_removed,
    watchdog_alert,
)
from monitor.domain.errors import StaleWriteError
from monitor.domain.findings import Finding, Severity
from monitor.domain.fleet import NamespaceReport
from monitor.domain.incidents import (
    Condition,
    Decision,
    IncidentRecord,
    Level,
    Notice,
    Observation,
    Observed,
    decide,
    observe,
)
from monitor.domain.model import KeyId

LOG = logging.getLogger("keyhealth.alerts")
_RACE_RETRIES = 8


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """When to re-notify, how to retry delivery, and for how long."""

    renotify: timedelta | None = timedelta(hours=4)  # while critical or revoked; None: never
    first_retry: timedelta = timedelta(seconds=30)
    max_retry: timedelta = timedelta(minutes=15)
    give_up_after: timedelta = timedelta(hours=24)
    send_timeout: float = 10.0  # seconds for one sink to answer
    delivery_budget: float = 50.0  # seconds one drain keeps starting new sends
    portal: str = "https://portal.azure.com"
    watchdog_sinks: tuple[str, ...] = ()  # empty: no watchdog
    watchdog_every: timedelta = timedelta(hours=1)

    def retry_delay(self, attempts: int) -> timedelta:
        """The wait after the `attempts`-th failure: doubling from first_retry, capped at max_retry."""
        delay = self.first_retry * (1 << min(attempts - 1, 30))
        return min(delay, self.max_retry)


@dataclass(frozen=True, slots=True)
class Alerting:
    """What raising alerts needs: where incidents live, who hears of them, and when."""

    store: StateStore
    router: Router
    policy: AlertPolicy = AlertPolicy()


def _log_notice(alert: Alert, sinks: Sequence[str], now: datetime) -> None:
    level = logging.ERROR if alert.level >= Level.CRITICAL and not alert.resolved else logging.WARNING
    if alert.resolved:
        level = logging.INFO
    LOG.log(
        level,
        "keyhealth alert %s: %s; sinks %s",
        alert.notice.value,
        alert.headline(now),
        ",".join(sinks) or "none (log only)",
    )


def _alarming(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity >= Severity.WARNING]


async def raise_alerts(
    alerting: Alerting,
    reports: Iterable[NamespaceReport],
    *,
    key_tags: Mapping[KeyId, Mapping[str, str]],
    now: datetime,
    known: Mapping[tuple[str, str], Incident] | None = None,
) -> list[Alert]:
    """Move each namespace's incidents on and queue their notices; returns the alerts made.

    `known` is every stored incident by Incident.key (a poll reads them all at once); without it
    each condition's incident is read on its own (an event touches few namespaces).
    Raises StateStoreError when the store fails.
    """
    made: list[Alert] = []
    for report in reports:
        namespace_id = report.prediction.namespace.id
        for condition, observed in observe(report).items():
            if known is not None:
                stored = known.get((namespace_key(namespace_id), condition.value))
            else:
                stored = await alerting.store.get_incident(namespace_id, condition.value)
            if stored is None and not isinstance(observed, Observation):
                continue  # nothing stored and nothing to open: most namespaces, most of the time
            alert = await _advance(alerting, report, condition, observed, stored, key_tags, now)
            if alert is not None:
                made.append(alert)
    return made


async def _advance(
    alerting: Alerting,
    report: NamespaceReport,
    condition: Condition,
    observed: Observed,
    stored: Incident | None,
    key_tags: Mapping[KeyId, Mapping[str, str]],
    now: datetime,
) -> Alert | None:
    namespace_id = report.prediction.namespace.id
    for _ in range(_RACE_RETRIES):
        previous = _record_of(stored)
        decision = decide(previous, observed, now=now, renotify=alerting.policy.renotify)
        if decision.record is None:
            return None
        findings = observed.findings if isinstance(observed, Observation) else tuple(_alarming(report.findings))
        alert, sinks, record = _notice(
            alerting, decision, previous, condition, namespace_id, now, report, findings, key_tags
        )
        try:
            await _commit(alerting.store, namespace_id, condition, record, stored, alert, sinks, now)
        except StaleWriteError:
            stored = await alerting.store.get_incident(namespace_id, condition.value)  # someone moved it: judge again
            continue
        if alert is not None:
            _log_notice(alert, sinks, now)
        return alert
    LOG.warning(
        "keyhealth: incident %s of %s kept changing under this instance; left to the next run",
        condition.value,
        namespace_id,
    )
    return None


def _record_of(stored: Incident | None) -> IncidentRecord | None:
    if stored is None:
        return None
    try:
        return IncidentRecord.from_document(stored.body)
    except (KeyError, TypeError, ValueError):
        LOG.warning(
            "keyhealth: incident %s of %s has an unreadable body; starting it afresh",
            stored.condition,
            stored.namespace_id,
        )
        return None


def _notice(
    alerting: Alerting,
    decision: Decision,
    previous: IncidentRecord | None,
    condition: Condition,
    namespace_id: str,
    now: datetime,
    report: NamespaceReport,
    findings: Sequence[Finding],
    key_tags: Mapping[KeyId, Mapping[str, str]],
) -> tuple[Alert | None, tuple[str, ...], IncidentRecord]:
    record = decision.record
    assert record is not None  # noqa: S101 - narrows the type; holds by construction
    if decision.notice is None:
        return None, (), record
    context = _context(namespace_id, condition, decision, now)
    alert = alert_for(report, context, findings=findings, key_tags=key_tags, portal=alerting.policy.portal, now=now)
    sinks = _sinks_for(alerting.router, alert, decision.notice, previous)
    told = sinks if decision.notice is Notice.OPEN else tuple(dict.fromkeys((*record.sinks, *sinks)))
    return alert, sinks, replace(record, sinks=told)


def _context(namespace_id: str, condition: Condition, decision: Decision, now: datetime) -> NoticeContext:
    record = decision.record
    assert record is not None and decision.notice is not None  # noqa: S101 - narrows the type; holds by construction
    return NoticeContext(
        id=notice_id(now, namespace_id, condition.value, record.notices),
        notice=decision.notice,
        condition=condition,
        level=record.level,
        previous_level=decision.previous_level,
        incident_number=record.number,
        opened_at=record.opened_at,
    )


def _sinks_for(router: Router, alert: Alert, notice: Notice, previous: IncidentRecord | None) -> tuple[str, ...]:
    if notice is Notice.RESOLVE:
        return previous.sinks if previous is not None else ()  # whoever heard it opened hears it close
    return router.sinks_for(alert)


async def _commit(
    store: StateStore,
    namespace_id: str,
    condition: Condition,
    record: IncidentRecord,
    stored: Incident | None,
    alert: Alert | None,
    sinks: Sequence[str],
    now: datetime,
) -> None:
    entries = []
    if alert is not None:
        document = alert.document()
        entries = [
            OutboxEntry(
                id=outbox_id(now, namespace_id, condition.value, record.notices, sink),
                namespace_id=namespace_id,
                condition=condition.value,
                sink=sink,
                document=document,
                created_at=now,
            )
            for sink in sinks
        ]
    incident = Incident(namespace_id=namespace_id, condition=condition.value, body=record.document(), open=record.open)
    await store.put_incident(incident, expected_etag=None if stored is None else stored.etag, outbox=entries)


async def resolve_removed(alerting: Alerting, namespace_ids: Iterable[str], *, now: datetime) -> list[Alert]:
    """Resolve the open incidents of namespaces that left the fleet (deleted, or no longer on a customer key)."""
    wanted = {namespace_key(n) for n in namespace_ids}
    if not wanted:
        return []
    made = []
    for incident in await alerting.store.list_incidents(open_only=True):
        if namespace_key(incident.namespace_id) not in wanted:
            continue
        alert = await _resolve_gone(alerting, incident, now)
        if alert is not None:
            made.append(alert)
    return made


async def _resolve_gone(alerting: Alerting, stored: Incident, now: datetime) -> Alert | None:
    condition = Condition(stored.condition)
    previous = _record_of(stored)
    if previous is None:
        return None
    decision = decide(previous, None, now=now, renotify=alerting.policy.renotify)
    if decision.record is None or decision.notice is None:
        return None
    record = decision.record
    alert = alert_for_removed(_context(stored.namespace_id, condition, decision, now), stored.namespace_id, now=now)
    try:
        await _commit(alerting.store, stored.namespace_id, condition, record, stored, alert, previous.sinks, now)
    except StaleWriteError:
        return None  # another instance moved it; the next poll sees the namespace gone again
    _log_notice(alert, previous.sinks, now)
    return alert


# -- remediation notices


async def queue_action_notice(
    alerting: Alerting, report: NamespaceReport, action: AlertAction, *, level: Level, now: datetime
) -> Alert | None:
    """Tell the namespace's people what remediation did, would do, or could not do.

    It goes to whoever heard of the namespace's revocation incident (else the routes), through the
    outbox, carried by the namespace's never-opened `remediation` record. Raises StateStoreError.
    """
    namespace_id = report.prediction.namespace.id
    for _ in range(_RACE_RETRIES):
        carrier = await alerting.store.get_incident(namespace_id, Condition.REMEDIATION.value)
        previous = _record_of(carrier)
        record = IncidentRecord(
            level=level,
            open=False,
            number=0,
            opened_at=now,
            updated_at=now,
            last_notified_at=now,
            notices=(previous.notices if previous else 0) + 1,
            peak=level,
        )
        context = NoticeContext(
            id=notice_id(now, namespace_id, Condition.REMEDIATION.value, record.notices),
            notice=Notice.ACTION,
            condition=Condition.REMEDIATION,
            level=level,
            previous_level=None,
            incident_number=0,
            opened_at=now,
        )
        alert = replace(
            alert_for(report, context, findings=(), key_tags={}, portal=alerting.policy.portal, now=now),
            action=action,
        )
        revocation = _record_of(await alerting.store.get_incident(namespace_id, Condition.REVOCATION.value))
        sinks = revocation.sinks if revocation is not None and revocation.open else alerting.router.sinks_for(alert)
        try:
            await _commit(alerting.store, namespace_id, Condition.REMEDIATION, record, carrier, alert, sinks, now)
        except StaleWriteError:
            continue
        log = LOG.error if action.outcome == "failed" else LOG.warning
        log(
            "keyhealth remediation %s: %s; sinks %s", action.outcome, alert.headline(now), ",".join(sinks) or "log only"
        )
        return alert
    return None


# -- the watchdog


async def queue_watchdog(alerting: Alerting, *, namespaces: int, now: datetime) -> Alert | None:
    """After a complete poll: queue a Watchdog notice to the watchdog sinks, unless one was queued (by any
    instance) within `watchdog_every`. Through the outbox, so retries and the single deliverer apply.

    Returns the alert queued, or None. Raises StateStoreError.
    """
    sinks = alerting.policy.watchdog_sinks
    if not sinks:
        return None
    for _ in range(_RACE_RETRIES):
        carrier = await alerting.store.get_incident(WATCHDOG_ID, Condition.WATCHDOG.value)
        previous = _record_of(carrier)
        if previous is not None and now - previous.last_notified_at < alerting.policy.watchdog_every:
            return None
        record = IncidentRecord(
            level=Level.WARNING,
            open=False,
            number=0,
            opened_at=previous.opened_at if previous else now,
            updated_at=now,
            last_notified_at=now,
            notices=(previous.notices if previous else 0) + 1,
            peak=Level.WARNING,
            sinks=sinks,
        )
        alert = watchdog_alert(
            id=notice_id(now, WATCHDOG_ID, Condition.WATCHDOG.value, record.notices),
            namespaces=namespaces,
            portal=alerting.policy.portal,
            now=now,
        )
        try:
            await _commit(alerting.store, WATCHDOG_ID, Condition.WATCHDOG, record, carrier, alert, sinks, now)
        except StaleWriteError:
            continue  # another instance queued it at the same moment: its notice is the one
        LOG.info("keyhealth watchdog: %s; sinks %s", alert.headline(now), ",".join(sinks))
        return alert
    return None


# -- delivery

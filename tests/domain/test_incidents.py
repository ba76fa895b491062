"""Incident conditions from judged namespaces, and the open/escalate/renotify/resolve state machine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from monitor.domain.alert import NoticeContext, alert_for
from monitor.domain.findings import Thresholds
from monitor.domain.fleet import NamespaceReport, evaluate
from monitor.domain.incidents import (
    HELD,
    Condition,
    IncidentRecord,
    Level,
    Notice,
    Observation,
    decide,
    observe,
)
from monitor.domain.scenario import parse_scenario
from tests.builders import NOW, SYSTEM_PRINCIPAL, VAULT, key, namespace, ref, scenario, vault, version

T0 = datetime(2026, 11, 22, tzinfo=UTC)
HOUR = timedelta(hours=1)
RENOTIFY = timedelta(hours=4)


def _report(document: dict[str, Any]) -> NamespaceReport:
    parsed, _ = parse_scenario(document)
    (report,) = evaluate(parsed, Thresholds()).namespaces
    return report


def _expiring_in(days: float, *, keys: int = 1) -> NamespaceReport:
    exp = (T0 + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    names = [f"k{n}" for n in range(keys)]
    return _report(
        scenario(
            [namespace("sb-a", *(ref(n) for n in names))],
            [key(n, version("v1", exp=exp)) for n in names],
            now=NOW,
        )
    )


def test_a_revocation_within_the_warning_threshold_is_a_warning_and_holds_the_rest():
    """Revocation 20 days out opens `revocation` at warning; redundancy and configuration are held under it."""
    observed = observe(_expiring_in(20))
    revocation = observed[Condition.REVOCATION]
    assert isinstance(revocation, Observation) and revocation.level is Level.WARNING
    assert {f.code.value for f in revocation.findings} >= {"revocation-predicted", "key-expiring"}
    assert observed[Condition.REDUNDANCY] == HELD and observed[Condition.CONFIGURATION] == HELD
    assert observed[Condition.BLIND] is None


def test_revocation_levels_follow_the_thresholds_and_the_status():
    """Critical within 7 days; revoked when no key is usable now; nothing beyond 30 days."""
    assert observe(_expiring_in(40))[Condition.REVOCATION] is None
    critical = observe(_expiring_in(5))[Condition.REVOCATION]
    assert isinstance(critical, Observation) and critical.level is Level.CRITICAL
    revoked = observe(_expiring_in(-1))[Condition.REVOCATION]
    assert isinstance(revoked, Observation) and revoked.level is Level.REVOKED


def test_a_broken_key_beside_a_working_one_is_a_redundancy_warning():
    """One of two keys disabled: no revocation, a redundancy incident at warning."""
    report = _report(
        scenario(
            [namespace("sb-a", ref("k1"), ref("k2"))],
            [key("k1"), key("k2", version("v1", enabled=False))],
        )
    )
    observed = observe(report)
    assert observed[Condition.REVOCATION] is None
    redundancy = observed[Condition.REDUNDANCY]
    assert isinstance(redundancy, Observation) and redundancy.level is Level.WARNING
    assert {f.code.value for f in redundancy.findings} == {"key-disabled", "no-redundancy"}


def test_vault_configuration_findings_open_a_configuration_incident():
    """Purge protection off is a configuration warning of its own."""
    report = _report(scenario([namespace("sb-a", ref("k1"))], [key("k1")], vaults=[vault(purge_protection=False)]))
    configuration = observe(report)[Condition.CONFIGURATION]
    assert isinstance(configuration, Observation)
    assert [f.code.value for f in configuration.findings] == ["vault-purge-protection-off"]


def test_an_unknown_namespace_holds_everything_but_blind():
    """What the monitor could not see neither opens nor resolves revocation; `blind` opens at critical."""
    document = scenario([namespace("sb-a", ref("k1"))], [key("k1")])
    document["blind"] = [{"scope": "vault", "target": VAULT, "reason": "HTTP 403"}]
    observed = observe(_report(document))
    blind = observed[Condition.BLIND]
    assert isinstance(blind, Observation) and blind.level is Level.CRITICAL
    assert all(observed[c] == HELD for c in (Condition.REVOCATION, Condition.REDUNDANCY, Condition.CONFIGURATION))


def _seen(level: Level) -> Observation:
    return Observation(level, ())


def test_an_incident_opens_escalates_twice_and_resolves():
    """warning -> critical -> revoked -> cleared: open, escalate, escalate, resolve, with the levels they had."""
    steps = [_seen(Level.WARNING), _seen(Level.CRITICAL), _seen(Level.REVOKED), None]
    record = None
    notices = []
    for hour, observed in enumerate(steps):
        decision = decide(record, observed, now=T0 + hour * HOUR, renotify=RENOTIFY)
        record = decision.record or record
        notices.append((decision.notice, decision.previous_level))
    assert notices == [
        (Notice.OPEN, None),
        (Notice.ESCALATE, Level.WARNING),
        (Notice.ESCALATE, Level.CRITICAL),
        (Notice.RESOLVE, Level.REVOKED),
    ]
    assert record is not None and not record.open and record.peak is Level.REVOKED and record.notices == 4


def test_the_same_observation_again_changes_nothing():
    """A repeated evaluation (a duplicate event) at the same level writes and sends nothing."""
    opened = decide(None, _seen(Level.WARNING), now=T0, renotify=RENOTIFY).record
    again = decide(opened, _seen(Level.WARNING), now=T0 + HOUR, renotify=RENOTIFY)
    assert again.record is None and again.notice is None


def test_critical_incidents_renotify_on_schedule_and_warnings_never():
    """Critical: renotified once `renotify` has passed since the last notice; warning: not at all."""
    critical = decide(None, _seen(Level.CRITICAL), now=T0, renotify=RENOTIFY).record
    assert decide(critical, _seen(Level.CRITICAL), now=T0 + 3 * HOUR, renotify=RENOTIFY).notice is None
    due = decide(critical, _seen(Level.CRITICAL), now=T0 + 4 * HOUR, renotify=RENOTIFY)
    assert due.notice is Notice.RENOTIFY and due.record is not None and due.record.last_notified_at == T0 + 4 * HOUR
    warning = decide(None, _seen(Level.WARNING), now=T0, renotify=RENOTIFY).record
    assert decide(warning, _seen(Level.WARNING), now=T0 + 100 * HOUR, renotify=RENOTIFY).notice is None
    assert decide(critical, _seen(Level.CRITICAL), now=T0 + 100 * HOUR, renotify=None).notice is None


def test_a_lower_level_is_recorded_quietly_and_a_later_rise_escalates_again():
    """critical -> warning sends nothing; warning -> critical again is an escalation."""
    critical = decide(None, _seen(Level.CRITICAL), now=T0, renotify=RENOTIFY).record
    lowered = decide(critical, _seen(Level.WARNING), now=T0 + HOUR, renotify=RENOTIFY)
    assert lowered.notice is None and lowered.record is not None and lowered.record.level is Level.WARNING
    risen = decide(lowered.record, _seen(Level.CRITICAL), now=T0 + 2 * HOUR, renotify=RENOTIFY)
    assert risen.notice is Notice.ESCALATE


def test_held_and_older_evaluations_change_nothing():
    """A held condition, or an evaluation older than the record, leaves it alone."""
    opened = decide(None, _seen(Level.CRITICAL), now=T0 + HOUR, renotify=RENOTIFY).record
    assert decide(opened, HELD, now=T0 + 10 * HOUR, renotify=RENOTIFY).record is None
    assert decide(opened, None, now=T0, renotify=RENOTIFY).record is None  # a slow poll read before the event


def test_a_resolved_incident_reopens_with_the_next_number():
    """After a resolve, the condition coming back opens incident number 2."""
    first = decide(None, _seen(Level.WARNING), now=T0, renotify=RENOTIFY).record
    resolved = decide(first, None, now=T0 + HOUR, renotify=RENOTIFY).record
    reopened = decide(resolved, _seen(Level.WARNING), now=T0 + 2 * HOUR, renotify=RENOTIFY)
    assert reopened.notice is Notice.OPEN and reopened.record is not None and reopened.record.number == 2


def test_records_round_trip_through_their_document():
    record = IncidentRecord(
        level=Level.REVOKED,
        open=False,
        number=3,
        opened_at=T0,
        updated_at=T0 + HOUR,
        last_notified_at=T0 + HOUR,
        notices=7,
        peak=Level.REVOKED,
        resolved_at=T0 + HOUR,
        sinks=("pager", "teams"),
    )
    assert IncidentRecord.from_document(record.document()) == record


def test_unknown_levels_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown alert level 'severe'"):
        Level.parse("severe")


PARTNER = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-dr/providers/"
    "Microsoft.ServiceBus/namespaces/sb-a-dr"
)


def _paired(partner_identity: dict[str, Any] | None, **changes: Any) -> NamespaceReport:
    pairing: dict[str, Any] = {"alias": "a", "partner": PARTNER}
    if partner_identity is not None:
        pairing["partner_identity"] = partner_identity
    pairing.update(changes)
    return _report(scenario([namespace("sb-a", ref("k1"), ref("k2"), geo_dr=pairing)], [key("k1"), key("k2")]))


def test_a_failover_that_would_revoke_the_partner_opens_its_own_critical_incident_with_that_headline():
    report = _paired({"principal_id": "p-partner-without-access"})
    observed = observe(report)
    failover = observed[Condition.FAILOVER]
    assert isinstance(failover, Observation) and failover.level is Level.CRITICAL
    assert {f.code.value for f in failover.findings} == {"geo-dr-partner-cannot-use-key"}
    # Not a redundancy incident: the namespace's own keys are both usable.
    assert observed[Condition.REDUNDANCY] is None and observed[Condition.REVOCATION] is None
    context = NoticeContext("n1", Notice.OPEN, Condition.FAILOVER, Level.CRITICAL, None, 1, T0)
    alert = alert_for(
        report, context, findings=failover.findings, key_tags={}, portal="https://portal.azure.com", now=T0
    )
    assert alert.headline(T0) == "[CRITICAL] sb-a Geo-DR: failover would revoke sb-a-dr"


def test_a_partner_that_could_not_be_read_is_a_failover_warning_and_a_healthy_pair_none():
    unread = observe(_paired(None, partner_blind="403 AuthorizationFailed"))[Condition.FAILOVER]
    assert isinstance(unread, Observation) and unread.level is Level.WARNING
    # The partner acting as the primary's own principal (shared access) has nothing to report.
    assert observe(_paired({"principal_id": SYSTEM_PRINCIPAL}))[Condition.FAILOVER] is None


def test_a_revocation_holds_the_failover_condition_under_it():
    report = _report(
        scenario(
            [namespace("sb-a", ref("k1"), geo_dr={"alias": "a", "partner": PARTNER})],
            [key("k1", version("v1", exp="2026-11-01T00:00:00Z"))],
        )
    )
    assert observe(report)[Condition.FAILOVER] == HELD

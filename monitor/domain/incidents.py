"""Incidents: which alerting conditions a judged namespace is in, and how an incident moves between polls.

A namespace has at most one incident per condition. While it is heading for Revoked (or is Revoked)
that one `revocation` incident carries everything else wrong with it, so on-call gets one page, not
one per finding; the other conditions are held as they were until it clears. What the monitor could
not see never opens, escalates or resolves anything but the `blind` condition.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from monitor.domain.findings import Code, Finding, Severity
from monitor.domain.fleet import NamespaceReport
from monitor.domain.prediction import Status


class Condition(enum.Enum):
    """What an incident is about."""

    REVOCATION = "revocation"  # Revoked now, or predicted to be within the warning threshold
    REDUNDANCY = "redundancy"  # a listed key is unusable now or soon while another still covers
    CONFIGURATION = "configuration"  # vault soft delete or purge protection off, a pinned version
    FAILOVER = "failover"  # a Geo-DR partner that could not use the keys after a failover, or could not be read
    BLIND = "blind"  # the monitor cannot read what decides a listed key
    # The service's own key calls, in the vaults' audit logs: failing, or a usable key dropped from its record.
    SERVICE = "service"
    REMEDIATION = "remediation"  # never opens: carries the notices of what remediation did or would do
    WATCHDOG = "watchdog"  # never opens: the monitor's own always-firing heartbeat, about no namespace


class Level(enum.IntEnum):
    """How bad an incident is; ordered so that a rise is an escalation."""

    WARNING = 1
    CRITICAL = 2
    REVOKED = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Level:
        """The level named `text` (warning, critical, revoked). Raises ValueError for another word."""
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown alert level {text!r}: expected warning, critical or revoked") from None


class Notice(enum.Enum):
    """What is sent about an incident."""

    OPEN = "open"
    ESCALATE = "escalate"
    RENOTIFY = "renotify"
    RESOLVE = "resolve"
    ACTION = "action"  # remediation did (or, in a dry run, would do) something, or failed to
    WATCHDOG = "watchdog"  # "still polling": a dead-man's switch whose silence at the receiver is the alarm


_CONFIGURATION_CODES = frozenset({Code.VAULT_SOFT_DELETE_OFF, Code.VAULT_PURGE_PROTECTION_OFF, Code.VERSION_PINNED})
_FAILOVER_CODES = frozenset({Code.GEO_DR_PARTNER_CANNOT_USE_KEY, Code.GEO_DR_PARTNER_UNKNOWN})
_SERVICE_CODES = frozenset({Code.SERVICE_ACCESS_FAILING, Code.KEY_DROPPED_FROM_RECORD})
_NOT_REDUNDANCY = (
    _CONFIGURATION_CODES | _FAILOVER_CODES | _SERVICE_CODES | {Code.REVOCATION_PREDICTED, Code.MONITOR_BLIND}
)
# What an unknown namespace, or one heading for Revoked, holds as it was.
_HELD_WHEN_UNKNOWN = (
    Condition.REVOCATION,
    Condition.REDUNDANCY,
    Condition.CONFIGURATION,
    Condition.FAILOVER,
    Condition.SERVICE,
)


@dataclass(frozen=True, slots=True)
class Observation:
    """A condition that holds now, how badly, and the findings behind it (worst first)."""

    level: Level
    findings: tuple[Finding, ...]


# A condition is observed (it holds), cleared (None), or held: the evaluation cannot say, so nothing moves.
HELD = "held"
Observed = Observation | None | str


def _level(severity: Severity) -> Level:
    return Level.CRITICAL if severity >= Severity.CRITICAL else Level.WARNING


def _observation(findings: list[Finding], level: Level | None = None) -> Observation | None:
    if not findings:
        return None
    worst = _level(max(f.severity for f in findings))
    return Observation(max(worst, level) if level is not None else worst, tuple(findings))


def observe(report: NamespaceReport) -> dict[Condition, Observed]:
    """Every condition's state for one judged namespace.

    Only findings at warning or above count. An unknown namespace holds every condition but `blind`;
    a revocation incident holds `redundancy` and `configuration` and lists their findings itself.
    """
    status = report.prediction.status_now
    alarming = [f for f in report.findings if f.severity >= Severity.WARNING]
    blind = [f for f in alarming if f.code is Code.MONITOR_BLIND]
    observed: dict[Condition, Observed] = {
        Condition.BLIND: _observation(blind, Level.CRITICAL if status is Status.UNKNOWN else None)
    }
    if status is Status.UNKNOWN:
        observed.update({c: HELD for c in _HELD_WHEN_UNKNOWN})
        return observed
    predicted = any(f.code is Code.REVOCATION_PREDICTED for f in alarming)
    if status is Status.REVOKED or predicted:
        causes = [f for f in alarming if f.code is not Code.MONITOR_BLIND]
        level = Level.REVOKED if status is Status.REVOKED else _level(max(f.severity for f in causes))
        observed[Condition.REVOCATION] = Observation(level, tuple(causes))
        observed[Condition.REDUNDANCY] = HELD
        observed[Condition.CONFIGURATION] = HELD
        observed[Condition.FAILOVER] = HELD
        observed[Condition.SERVICE] = HELD
        return observed
    observed[Condition.REVOCATION] = None
    observed[Condition.REDUNDANCY] = _observation([f for f in alarming if f.code not in _NOT_REDUNDANCY])
    observed[Condition.CONFIGURATION] = _observation([f for f in alarming if f.code in _CONFIGURATION_CODES])
    observed[Condition.FAILOVER] = _observation([f for f in alarming if f.code in _FAILOVER_CODES])
    seen = report.prediction.namespace.observed
    # Audit logs that could not be read this time say nothing about the service's calls: nothing moves.
    unobserved = seen is not None and seen.unobserved is not None
    observed[Condition.SERVICE] = (
        HELD if unobserved else _observation([f for f in alarming if f.code in _SERVICE_CODES])
    )
    return observed


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """What is remembered of one (namespace, condition) between evaluations."""

    level: Level
    open: bool
    number: int  # how many times this condition has opened for the namespace
    opened_at: datetime
    updated_at: datetime  # the evaluation that last wrote it: an older one must not undo it
    last_notified_at: datetime
    notices: int  # notices sent so far over every opening: orders them
    peak: Level
    resolved_at: datetime | None = None
    sinks: tuple[str, ...] = ()  # who has been told since it opened: they get the resolve

    def document(self) -> dict[str, Any]:
        """JSON-ready, for the state store."""
        return {
            "level": self.level.label,
            "open": self.open,
            "number": self.number,
            "opened_at": self.opened_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "last_notified_at": self.last_notified_at.isoformat(),
            "notices": self.notices,
            "peak": self.peak.label,
            "resolved_at": None if self.resolved_at is None else self.resolved_at.isoformat(),
            "sinks": list(self.sinks),
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> IncidentRecord:
        """Raises ValueError (or KeyError, TypeError) when the stored body is not one this code wrote."""
        resolved = document.get("resolved_at")
        return cls(
            level=Level.parse(str(document["level"])),
            open=bool(document["open"]),
            number=int(document["number"]),
            opened_at=datetime.fromisoformat(str(document["opened_at"])),
            updated_at=datetime.fromisoformat(str(document["updated_at"])),
            last_notified_at=datetime.fromisoformat(str(document["last_notified_at"])),
            notices=int(document["notices"]),
            peak=Level.parse(str(document["peak"])),
            resolved_at=None if resolved is None else datetime.fromisoformat(str(resolved)),
            sinks=tuple(str(s) for s in document.get("sinks", ())),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """What to store (None: leave the record alone) and what to send (None: nothing)."""

    record: IncidentRecord | None
    notice: Notice | None = None
    previous_level: Level | None = None


_NOTHING = Decision(None)


def decide(
    previous: IncidentRecord | None, observed: Observed, *, now: datetime, renotify: timedelta | None
) -> Decision:
    """The next step of one incident, given what the evaluation at `now` observed.

    Opens on a condition that holds, escalates when its level rises, re-notifies every `renotify` while
    critical or revoked (None: never), lowers its level quietly, resolves when it clears. An evaluation
    older than the record's last update changes nothing, so a slow poll cannot undo a newer event's work.
    """
    if isinstance(observed, str) or (previous is not None and now < previous.updated_at):
        return _NOTHING  # held, or older than what is stored
    if previous is None or not previous.open:
        if observed is None:
            return _NOTHING
        record = IncidentRecord(
            level=observed.level,
            open=True,
            number=(previous.number if previous else 0) + 1,
            opened_at=now,
            updated_at=now,
            last_notified_at=now,
            notices=(previous.notices if previous else 0) + 1,
            peak=observed.level,
        )
        return Decision(record, Notice.OPEN)
    if observed is None:
        resolved = replace(
            previous, open=False, updated_at=now, resolved_at=now, last_notified_at=now, notices=previous.notices + 1
        )
        return Decision(resolved, Notice.RESOLVE, previous.level)
    if observed.level > previous.level:
        escalated = replace(
            previous,
            level=observed.level,
            peak=max(previous.peak, observed.level),
            updated_at=now,
            last_notified_at=now,
            notices=previous.notices + 1,
        )
        return Decision(escalated, Notice.ESCALATE, previous.level)
    if observed.level < previous.level:
        return Decision(replace(previous, level=observed.level, updated_at=now), None, previous.level)
    due = renotify is not None and now - previous.last_notified_at >= renotify
    if previous.level >= Level.CRITICAL and due:
        again = replace(previous, updated_at=now, last_notified_at=now, notices=previous.notices + 1)
        return Decision(again, Notice.RENOTIFY, previous.level)
    return _NOTHING

"""What a timeline report shows, per namespace: each listed key's usable stretches, the gaps between them and
why, the predicted revocation window, and the scenario changes that touch the namespace."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.domain.documents import format_instant
from monitor.domain.fleet import FleetReport, NamespaceReport
from monitor.domain.intervals import Interval
from monitor.domain.model import (
    KEEP,
    BlindSpot,
    Change,
    DeleteKey,
    DeleteVault,
    KeyRef,
    Namespace,
    NewVersion,
    PurgeKey,
    RecoverKey,
    RecoverVault,
    Scenario,
    SetAccess,
    SetNetwork,
    UpdateVersion,
    is_managed_hsm,
    key_url,
    name_id,
    vault_id,
    vault_short_name,
)
from monitor.domain.prediction import Status
from monitor.domain.usability import assess
from monitor.domain.world import World

# A drawing spans at least this long, and runs this fraction past the last change it shows.
MIN_SHOWN = timedelta(days=14)
SHOWN_MARGIN = 0.15


@dataclass(frozen=True, slots=True)
class Gap:
    """A part of the window in which one key reference is not usable."""

    start: datetime
    end: datetime
    reasons: tuple[str, ...]  # finding codes (key-expired, access-denied, …) at the gap's start
    unknown: bool  # the monitor could not see: neither usable nor not


@dataclass(frozen=True, slots=True)
class Lane:
    """One listed key reference over the window."""

    label: str  # vault/key, with the pinned version if any
    key: str  # key URL
    version: str | None
    identity: str | None
    usable: tuple[Interval, ...]
    gaps: tuple[Gap, ...]


@dataclass(frozen=True, slots=True)
class Mark:
    """A scenario change that touches the namespace."""

    at: datetime
    text: str


@dataclass(frozen=True, slots=True)
class NamespaceTimeline:
    report: NamespaceReport
    lanes: tuple[Lane, ...]
    changes: tuple[Mark, ...]

    @property
    def namespace(self) -> Namespace:
        return self.report.prediction.namespace


@dataclass(frozen=True, slots=True)
class FleetTimeline:
    now: datetime
    horizon: datetime
    namespaces: tuple[NamespaceTimeline, ...]  # most urgent first
    blind: tuple[BlindSpot, ...]
    # Where a drawing may stop: nothing shown changes between this and the horizon.
    shown_until: datetime


def urgency(report: NamespaceReport) -> tuple[int, datetime, str]:
    """Sort key, most urgent first: revoked; unknown; a revocation predicted (soonest first); degraded; healthy."""
    prediction = report.prediction
    status = prediction.status_now
    earliest = prediction.revoked_at_earliest
    if status is Status.REVOKED:
        rank = 0
    elif status is Status.UNKNOWN:
        rank = 1
    elif earliest is not None:
        rank = 2
    else:
        rank = 3 if status is Status.DEGRADED else 4
    return rank, earliest or prediction.horizon, prediction.namespace.name.lower()


def fleet_timeline(scenario: Scenario, world: World, report: FleetReport) -> FleetTimeline:
    """The timelines of every namespace of `report`, judged against the `world` it was predicted in."""
    timelines = [
        NamespaceTimeline(entry, _lanes(world, entry, report.horizon), _marks(scenario, entry.prediction.namespace))
        for entry in sorted(report.namespaces, key=urgency)
    ]
    return FleetTimeline(
        report.now, report.horizon, tuple(timelines), report.blind, _shown_until(timelines, report.now, report.horizon)
    )


def _shown_until(timelines: list[NamespaceTimeline], now: datetime, horizon: datetime) -> datetime:
    """A little past the last instant at which anything drawn changes (at least MIN_SHOWN), so a year's window
    does not squeeze this week's events into a hairline; never past the horizon."""
    last = now
    for timeline in timelines:
        for mark in timeline.changes:
            last = max(last, mark.at)
        for lane in timeline.lanes:
            for start, end in (*lane.usable, *((g.start, g.end) for g in lane.gaps)):
                last = max(last, start, end if end < horizon else start)
        for stretch in timeline.report.prediction.stretches:
            last = max(last, stretch.start, stretch.end if not stretch.open_ended else stretch.start)
    return min(horizon, max(now + MIN_SHOWN, last + (last - now) * SHOWN_MARGIN))


def _lanes(world: World, report: NamespaceReport, horizon: datetime) -> tuple[Lane, ...]:
    prediction = report.prediction
    namespace = prediction.namespace
    lanes = []
    for ref, usable in zip(namespace.keys, prediction.usable_intervals, strict=True):
        gaps = tuple(
            _gap(world, namespace, ref, start, end) for start, end in _complement(usable, prediction.now, horizon)
        )
        lanes.append(Lane(_label(ref), key_url(ref.vault, ref.name), ref.version, ref.identity, usable, gaps))
    return tuple(lanes)


def _label(ref: KeyRef) -> str:
    label = f"{vault_short_name(ref.vault)}/{ref.name}"
    return f"{label} @ {ref.version[:8]}" if ref.version else label


def _complement(intervals: tuple[Interval, ...], start: datetime, end: datetime) -> list[Interval]:
    gaps = []
    cursor = start
    for span_start, span_end in intervals:
        if span_start > cursor:
            gaps.append((cursor, span_start))
        cursor = max(cursor, span_end)
    if cursor < end:
        gaps.append((cursor, end))
    return gaps


def _gap(world: World, namespace: Namespace, ref: KeyRef, start: datetime, end: datetime) -> Gap:
    assessment = assess(world, namespace, ref, start)
    return Gap(start, end, tuple(r.value for r in assessment.reasons), unknown=assessment.is_unknown)


def _marks(scenario: Scenario, namespace: Namespace) -> tuple[Mark, ...]:
    vaults = {vault_id(ref.vault) for ref in namespace.keys}
    keys = {(vault_id(ref.vault), name_id(ref.name)) for ref in namespace.keys}
    principals = {
        name_id(p)
        for p in (namespace.identity.principal_id, *namespace.identity.user_assigned.values())
        if p is not None
    }
    horizon = scenario.effective_horizon
    marks = []
    for change in scenario.changes:
        if not scenario.now <= change.at <= horizon or vault_id(change.vault) not in vaults:
            continue
        if isinstance(change, SetAccess):
            touches = name_id(change.principal) in principals
        elif isinstance(change, DeleteVault | RecoverVault | SetNetwork):
            touches = True
        else:
            touches = (vault_id(change.vault), name_id(change.key)) in keys
        if touches:
            marks.append(Mark(change.at, describe_change(change)))
    return tuple(sorted(marks, key=lambda m: m.at))


def describe_change(change: Change) -> str:
    """One change in words an on-call engineer uses."""
    vault = vault_short_name(change.vault)
    if isinstance(change, NewVersion):
        state = "" if change.version.enabled else " (disabled!)"
        return f"key {change.key} in {vault} rotated to version {change.version.version}{state}"
    if isinstance(change, UpdateVersion):
        parts = []
        if change.enabled is not KEEP:
            parts.append("enabled" if change.enabled else "disabled")
        if change.exp is not KEEP:
            parts.append(f"expiry set to {format_instant(change.exp)}" if change.exp else "expiry removed")
        if change.nbf is not KEEP:
            parts.append(f"not-before set to {format_instant(change.nbf)}" if change.nbf else "not-before removed")
        if change.key_ops is not KEEP:
            parts.append(f"operations set to {', '.join(change.key_ops or ()) or 'none'}")
        which = f"version {change.version}" if change.version else "current version"
        return f"key {change.key} in {vault} ({which}): {', '.join(parts)}"
    if isinstance(change, DeleteKey):
        return f"key {change.key} in {vault} deleted"
    if isinstance(change, RecoverKey):
        return f"key {change.key} in {vault} recovered"
    if isinstance(change, PurgeKey):
        return f"key {change.key} in {vault} purged"
    if isinstance(change, SetAccess):
        granted = ", ".join(sorted(change.permissions)) or "nothing"
        if is_managed_hsm(change.vault):  # its local RBAC: no Event Grid event says so, only a poll sees it
            return f"principal {change.principal[:8]}… now holds {granted} on Managed HSM {vault} (no event is sent)"
        return f"principal {change.principal[:8]}… now holds {granted} on {vault}"
    if isinstance(change, DeleteVault):
        return f"vault {vault} deleted"
    if isinstance(change, SetNetwork):
        parts = []
        if change.public_network_access is not KEEP:
            parts.append(f"public network access {'enabled' if change.public_network_access else 'disabled'}")
        if change.default_action is not KEEP:
            parts.append(f"firewall default action {change.default_action}")
        if change.bypass_azure_services is not KEEP:
            parts.append("trusted Microsoft services " + ("let through" if change.bypass_azure_services else "blocked"))
        if change.allows_monitor is not KEEP:
            parts.append("the monitor's network " + ("allowed" if change.allows_monitor else "no longer allowed"))
        return f"vault {vault} network: {', '.join(parts) or 'unchanged'}"
    assert isinstance(change, RecoverVault)  # noqa: S101 - narrows the type; holds by construction
    return f"vault {vault} recovered"

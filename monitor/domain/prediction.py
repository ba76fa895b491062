"""Revocation windows per namespace over a timeline, mirroring Service Bus's 300-second key poll.

Usability is piecewise constant between change instants, so each reference's usable time is an
exact list of intervals; a namespace is at risk during the stretches no reference covers.

The intervals come from interval arithmetic on each rule (`usability.UsableTime`), which
is what keeps a fleet of 100,000 namespaces fast; `usable_intervals_by_points`, which judges the
reference with `assess` at every instant its usability may change, is the slow reference they are
checked against.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

from monitor.domain.errors import ScenarioError
from monitor.domain.intervals import Interval
from monitor.domain.model import POLL_INTERVAL, KeyRef, Namespace, Scenario, name_id
from monitor.domain.observed import NamespaceObservation, exact_revocation, observe
from monitor.domain.usability import Assessment, UsableTime, assess, assess_as, change_instants
from monitor.domain.world import World

# `now` and the horizon must come before this: nothing needs the far future, and near year 9999 the window's
# arithmetic (a year's default horizon, 5-minute polls, thresholds of up to ten years) overflows.
JUDGED_UNTIL = datetime(9000, 1, 1, tzinfo=UTC)
TOO_LATE = "after the year 8999, the last keyhealth judges"


class Status(enum.Enum):
    """A namespace's standing at `now`."""

    HEALTHY = "healthy"  # every listed reference is usable
    DEGRADED = "degraded"  # some, not all, are usable
    REVOKED = "revoked"  # none is usable: the next poll revokes the namespace
    UNKNOWN = "unknown"  # the monitor could not see enough to tell


@dataclass(frozen=True, slots=True)
class Stretch:
    """A span of time with no usable reference; `open_ended` when it lasts to the horizon."""

    start: datetime
    end: datetime
    open_ended: bool

    @property
    def certain(self) -> bool:
        """True when a poll must land inside it, wherever the poll phase is."""
        return self.open_ended or self.end - self.start >= POLL_INTERVAL


@dataclass(frozen=True, slots=True)
class NamespacePrediction:
    """What the rules say about one namespace from `now` to `horizon`."""

    namespace: Namespace
    now: datetime
    horizon: datetime
    assessments_now: tuple[Assessment, ...]
    usable_intervals: tuple[tuple[Interval, ...], ...]  # per reference, in listing order
    stretches: tuple[Stretch, ...]
    # Each reference judged at the start of the first stretch: why the namespace would go Revoked.
    assessments_at_revocation: tuple[Assessment, ...] | None
    # Extension: what the service's own key accesses showed (its `observed`), judged once for findings and output.
    observation: NamespaceObservation | None = None

    @property
    def usable_keys_now(self) -> int:
        return sum(1 for a in self.assessments_now if a.usable)

    @property
    def keys_total(self) -> int:
        return len(self.namespace.keys)

    @property
    def status_now(self) -> Status:
        usable = 0
        for assessment in self.assessments_now:  # blind and usable_keys_now, in one pass
            # is_unknown and usable, read off the fields: every finding asks this of every namespace.
            if assessment.reasons:
                continue  # neither unknown nor usable
            if assessment.unknown:
                return Status.UNKNOWN
            usable += 1
        if usable == 0:
            return Status.REVOKED
        return Status.HEALTHY if usable == len(self.namespace.keys) else Status.DEGRADED

    @property
    def blind(self) -> bool:
        """Some reference could not be judged: neither healthy nor revoked can be claimed, so the
        namespace is unknown and no revocation window is predicted for it."""
        return any(a.is_unknown for a in self.assessments_now)

    @property
    def revoked_at(self) -> datetime | None:
        """Extension: the service's own poll that revokes the namespace, once the audit log gave its phase."""
        observation = self.observation
        if observation is None or not observation.known or self.blind:
            return None
        return exact_revocation(observation.phase, [(s.start, s.end) for s in self.stretches], self.now)

    @property
    def revoked_at_earliest(self) -> datetime | None:
        """Start of the first stretch without a usable reference: a poll may land at its very start."""
        return self.stretches[0].start if self.stretches else None

    @property
    def revoked_by(self) -> datetime | None:
        """Start + 300 s of the first stretch a poll cannot miss."""
        for stretch in self.stretches:
            if stretch.certain:
                return stretch.start + POLL_INTERVAL
        return None

    @property
    def first_certain_stretch(self) -> Stretch | None:
        return next((s for s in self.stretches if s.certain), None)


def usable_intervals(
    world: World, namespace: Namespace, ref: KeyRef, start: datetime, end: datetime
) -> tuple[Interval, ...]:
    """The exact intervals within [start, end) during which `ref` of `namespace` is usable.

    Sorted, disjoint and merged (no two touch), so equal usability gives equal tuples.
    """
    return tuple(UsableTime(world, start, end).of(ref, namespace.identity.principal_for(ref.identity)))


def usable_intervals_by_points(
    world: World, namespace: Namespace, ref: KeyRef, start: datetime, end: datetime
) -> tuple[Interval, ...]:
    """The same as `usable_intervals`, by judging `ref` with `assess` at each instant it may change.

    Slow (it assesses every vault and key change, whoever it concerns), but it follows the rules
    point by point, so tests hold the interval arithmetic to it.
    """
    points = [start, *change_instants(world, ref, start, end)]
    intervals: list[Interval] = []
    for index, point in enumerate(points):
        segment_end = points[index + 1] if index + 1 < len(points) else end
        if not assess(world, namespace, ref, point).usable:
            continue
        if intervals and intervals[-1][1] == point:
            intervals[-1] = (intervals[-1][0], segment_end)
        else:
            intervals.append((point, segment_end))
    return tuple(intervals)


def uncovered_stretches(covered: list[tuple[Interval, ...]], start: datetime, end: datetime) -> tuple[Stretch, ...]:
    """The parts of [start, end) that no interval covers."""
    for intervals in covered:  # the usual case, by far: one reference is usable throughout
        if len(intervals) == 1 and intervals[0][0] <= start and intervals[0][1] >= end:
            return ()
    spans = sorted(interval for intervals in covered for interval in intervals)
    stretches: list[Stretch] = []
    cursor = start
    for span_start, span_end in spans:
        if span_start > cursor:
            stretches.append(Stretch(cursor, span_start, open_ended=False))
        cursor = max(cursor, span_end)
    if cursor < end:
        stretches.append(Stretch(cursor, end, open_ended=True))
    return tuple(stretches)


class Predictor:
    """Predicts namespaces against one World and window."""

    def __init__(self, world: World, now: datetime, horizon: datetime) -> None:
        self.world = world
        self.now = now
        self.horizon = horizon
        self._usable = UsableTime(world, now, horizon)
        self._vault_ids: dict[str, str] = {}  # vault URI as spelled -> vault id

    def predict(self, namespace: Namespace) -> NamespacePrediction:
        world, now, horizon, usable = self.world, self.now, self.horizon, self._usable
        if world.blind_namespaces:
            unseen = world.blind_namespaces.get(name_id(namespace.id))
            if unseen is not None:
                return self._unseen(namespace, unseen)
        vault_ids = self._vault_ids
        identity = namespace.identity
        system_principal: str | None = None  # what references without an identity act as, resolved once
        principals = []
        per_ref = []
        assessments = []
        blind = False
        for ref in namespace.keys:
            # The principal the reference acts as, resolved once for its intervals and its assessments.
            if ref.identity is not None:
                principal = identity.principal_for(ref.identity)
            else:
                if system_principal is None:
                    system_principal = identity.principal_for(None)
                principal = system_principal
            vault = vault_ids.get(ref.vault)
            if vault is None:
                vault = vault_ids[ref.vault] = world.vault_id(ref.vault)
            key_id = (vault, name_id(ref.name))  # world.key_id(ref), without two calls
            # Not remembered per (key, version, principal): in a fleet of 100,000 namespaces 9 of 300,000
            # references repeat one, and keeping them all cost more than computing the repeats again.
            intervals, version = usable.of_key_from_start(key_id, ref.version, principal)
            if intervals and intervals[0][0] == now:
                # Usable now, as `assess_as` would find it: no reason, nothing unknown (a blind spot yields
                # no interval), and the effective version is all it would add. Nearly every reference is.
                assessment = Assessment(ref, principal, (), version)
            else:
                assessment = assess_as(world, ref, principal, now)
                blind = blind or assessment.is_unknown
            principals.append(principal)
            per_ref.append(intervals)
            assessments.append(assessment)
        # What could not be seen might cover any stretch.
        stretches = () if blind else uncovered_stretches(per_ref, now, horizon)
        at_revocation = None
        if stretches:
            first = stretches[0].start
            at_revocation = tuple(
                assess_as(world, ref, principal, first)
                for ref, principal in zip(namespace.keys, principals, strict=True)
            )
        # Positional: a third cheaper than by keyword, once per namespace. The fields' order, for reading:
        # namespace, now, horizon, assessments_now, usable_intervals, stretches, assessments_at_revocation.
        return NamespacePrediction(
            namespace,
            now,
            horizon,
            tuple(assessments),
            tuple(per_ref),
            stretches,
            at_revocation,
            observe(namespace) if namespace.observed is not None else None,
        )

    def _unseen(self, namespace: Namespace, reason: str) -> NamespacePrediction:
        """A namespace the monitor could not read itself: what it lists now is not known, so every reference is
        unknown (whatever its keys look like) and no window is predicted."""
        identity = namespace.identity
        assessments = tuple(
            Assessment(ref, identity.principal_for(ref.identity), (), None, (reason,)) for ref in namespace.keys
        )
        return NamespacePrediction(
            namespace,
            self.now,
            self.horizon,
            assessments,
            tuple(() for _ in namespace.keys),
            (),
            None,
            observe(namespace) if namespace.observed is not None else None,
        )


def predict_scenario(scenario: Scenario) -> tuple[World, list[NamespacePrediction]]:
    """Predict every namespace of a scenario, sorted by name then id.

    Raises ScenarioError when a change cannot apply, or the horizon is not after `now`.
    """
    world, predictor = scenario_predictor(scenario)
    return world, [predictor.predict(namespace) for namespace in sorted(scenario.snapshot.namespaces, key=by_name)]


def by_name(namespace: Namespace) -> tuple[str, str]:
    """The order predictions and reports are listed in: name, then id, case folded."""
    return namespace.name.lower(), namespace.id.lower()


def scenario_predictor(scenario: Scenario) -> tuple[World, Predictor]:
    """The scenario's World and a Predictor over its window, for namespaces predicted one at a time.

    Raises ScenarioError when a change cannot apply, or the horizon is not after `now`.
    """
    # The window is where arithmetic happens (a year's default horizon, poll intervals, thresholds of up to ten
    # years): near year 9999 it overflows. Times of keys and changes are only compared, so any year is fine.
    if scenario.now >= JUDGED_UNTIL:
        raise ScenarioError("$.now", f"{scenario.now.isoformat()} is {TOO_LATE}")
    horizon = scenario.effective_horizon
    if horizon >= JUDGED_UNTIL:
        raise ScenarioError("$.horizon", f"{horizon.isoformat()} is {TOO_LATE}")
    if horizon <= scenario.now:
        raise ScenarioError("$.horizon", f"horizon {horizon.isoformat()} is not after now {scenario.now.isoformat()}")
    world = World(scenario.snapshot, scenario.changes)
    return world, Predictor(world, scenario.now, horizon)

"""What the service's own key accesses show, as facts beside the prediction: the phase of its polls, each
listed key's last success and failure, and the keys it dropped from its record.

Service Bus (and Event Hubs) polls every listed key of a namespace every 300 s at a phase of its own: each
poll is a burst of calls (get, wrap, unwrap) on the keys, through the namespace's identity, which Key Vault's
audit log records. Pure: the accesses come in, the facts go out; nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from monitor.domain.model import POLL_INTERVAL, KeyAccess, Namespace, Observation, vault_id

PERIOD_SECONDS = POLL_INTERVAL.total_seconds()
# One poll's calls on all its keys arrive within this of its first call; a later call starts another poll.
POLL_SPREAD = timedelta(seconds=60)
# Polls whose phases differ by at most this are the same phase (network and queueing jitter).
PHASE_TOLERANCE_SECONDS = 5.0
# A phase resting on fewer polls is shown, not used: one burst could be a restart, a retry or a failover.
PHASE_MIN_POLLS = 2
# A listed key none of the namespace's latest this-many polls called is out of its record, even when the call
# that failed (and made the service drop it) is older than the window observed.
SILENT_POLLS = 2
# Failed polls in a row, on a key the rules find usable, that make a hidden block the likely cause.
CONFIRMING_POLLS = 2
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ObservedPhase:
    """When in each 300 s cycle the service polls the namespace, and how many polls that rests on."""

    seconds: float  # in [0, 300): the poll instants are EPOCH + seconds + 300 k
    polls: int

    @property
    def known(self) -> bool:
        return self.polls >= PHASE_MIN_POLLS

    def next_poll(self, at: datetime) -> datetime:
        """The first poll instant at or after `at`."""
        offset = ((at - _EPOCH).total_seconds() - self.seconds) % PERIOD_SECONDS
        if offset < 1e-6:
            return at
        return at + timedelta(seconds=PERIOD_SECONDS - offset)


@dataclass(frozen=True, slots=True)
class KeyObservation:
    """One listed key as the service's own calls show it."""

    key: str  # the key's URL
    last_success: datetime | None
    last_failure: datetime | None
    last_status: int | None  # the status of the latest call, success or not
    # The latest call failed and a later poll of the namespace left the key out: the service dropped it from
    # its record, and does not come back to it however healthy it is again.
    dropped: bool
    # How many of the latest polls that called the key in a row had its call fail (0: the latest served).
    failed_polls: int = 0

    @property
    def failing(self) -> bool:
        """The service's latest call on the key failed."""
        return self.last_failure is not None and (self.last_success is None or self.last_failure > self.last_success)


@dataclass(frozen=True, slots=True)
class NamespaceObservation:
    """A namespace's observation judged: its phase (None when no poll was seen), its listed keys' calls."""

    phase: ObservedPhase | None
    keys: tuple[KeyObservation, ...]
    polls_seen: int
    unobserved: str | None = None
    diagnostics_missing: bool = False

    @property
    def known(self) -> bool:
        return self.unobserved is None


def _polls(accesses: Sequence[KeyAccess]) -> list[list[KeyAccess]]:
    """The accesses grouped into polls: a call more than POLL_SPREAD after its poll's first starts another."""
    polls: list[list[KeyAccess]] = []
    for access in sorted(accesses, key=lambda a: a.at):
        if polls and access.at - polls[-1][0].at <= POLL_SPREAD:
            polls[-1].append(access)
        else:
            polls.append([access])
    return polls


def compacted(accesses: Sequence[KeyAccess]) -> tuple[KeyAccess, ...]:
    """The accesses with only each key's last call of each poll, without versions: what the judging reads (a
    poll's phase is its first call; a key's status in it, its last), in a third of the rows a get, wrap and
    unwrap make; the stored snapshot keeps them."""
    kept: list[KeyAccess] = []
    for poll in _polls(accesses):
        first = poll[0]
        last: dict[tuple[str, str], KeyAccess] = {}
        for access in poll:
            last[_key_of(access)] = access
        calls = sorted(last.values(), key=lambda a: a.at)
        # The poll's first instant stays (it is the phase); the version, which nothing judges, does not.
        kept.append(KeyAccess(first.at, calls[0].key, calls[0].operation, calls[0].status))
        kept.extend(KeyAccess(a.at, a.key, a.operation, a.status) for a in calls[1:])
    return tuple(kept)


def for_storage(observation: Observation) -> Observation:
    """What a stored snapshot keeps of an observation, for an event's re-judging between two polls: the phase
    stated (once known), the calls of the latest polls, and each key's last success and last failure. The keys
    are judged alike (status, last success and failure, dropped); only how many polls the phase and a run of
    failures rest on can read lower, down to what the latest polls show."""
    if observation.unobserved is not None or not observation.accesses:
        return observation
    polls = _polls(observation.accesses)
    recent = [access for poll in polls[-max(SILENT_POLLS, CONFIRMING_POLLS) :] for access in poll]
    extremes: dict[tuple[tuple[str, str], bool], KeyAccess] = {}
    for access in observation.accesses:
        slot = (_key_of(access), access.succeeded)
        if slot not in extremes or access.at > extremes[slot].at:
            extremes[slot] = access
    kept = {id(a): a for a in (*recent, *extremes.values())}
    phase = learn_phase(polls) if observation.phase is None else None
    stated = observation.phase if observation.phase is not None else (phase.seconds if phase and phase.known else None)
    return Observation(accesses=tuple(sorted(kept.values(), key=lambda a: a.at)), since=observation.since, phase=stated)


def _phase_of(at: datetime) -> float:
    return (at - _EPOCH).total_seconds() % PERIOD_SECONDS


def _circular_gap(a: float, b: float) -> float:
    gap = abs(a - b) % PERIOD_SECONDS
    return min(gap, PERIOD_SECONDS - gap)


def learn_phase(polls: Sequence[Sequence[KeyAccess]]) -> ObservedPhase | None:
    """The phase of the latest poll, and how many polls agree with it: a service that moved its phase (a
    restart, a failover) is followed from its latest poll on, and the older ones stop counting."""
    if not polls:
        return None
    latest = _phase_of(polls[-1][0].at)
    agreeing = [
        phase
        for phase in (_phase_of(poll[0].at) for poll in polls)
        if _circular_gap(phase, latest) <= PHASE_TOLERANCE_SECONDS
    ]
    # The mean of the agreeing phases, unwrapped around the latest so 299.5 and 0.5 average to 0.
    unwrapped = [
        latest + ((phase - latest + PERIOD_SECONDS / 2) % PERIOD_SECONDS - PERIOD_SECONDS / 2) for phase in agreeing
    ]
    return ObservedPhase(round(sum(unwrapped) / len(unwrapped) % PERIOD_SECONDS, 3), len(agreeing))


def _key_of(access: KeyAccess) -> tuple[str, str]:
    vault, _, name = access.key.partition("/keys/")
    return vault_id(vault), name.strip("/").split("/", 1)[0].lower()


def observe(namespace: Namespace, observation: Observation | None = None) -> NamespaceObservation | None:
    """The namespace's observation judged, or None when it has none (not asked for, or not configured)."""
    observation = observation if observation is not None else namespace.observed
    if observation is None:
        return None
    if observation.unobserved is not None:
        return NamespaceObservation(None, (), 0, observation.unobserved, observation.diagnostics_missing)
    polls = _polls(observation.accesses)
    phase = learn_phase(polls)
    if observation.phase is not None:  # stated: it rests on nothing the window shows, and is taken as known
        phase = ObservedPhase(observation.phase % PERIOD_SECONDS, max(PHASE_MIN_POLLS, len(polls)))
    keys = []
    for ref in namespace.keys:
        wanted = (ref.key_id[0], ref.key_id[1].lower())
        calls = [a for a in observation.accesses if _key_of(a) == wanted]
        successes = [a.at for a in calls if a.succeeded]
        failures = [a.at for a in calls if not a.succeeded]
        latest = max(calls, key=lambda a: a.at) if calls else None
        dropped = False
        if latest is not None and not latest.succeeded:
            # A later poll that did not touch the key: the service has left it out of its record.
            dropped = any(
                poll[0].at - latest.at > POLL_SPREAD and all(_key_of(a) != wanted for a in poll) for poll in polls
            )
        else:
            # Its failure lies before the window: the latest polls leaving it out say the same.
            recent = polls[-SILENT_POLLS:]
            dropped = len(recent) == SILENT_POLLS and all(all(_key_of(a) != wanted for a in poll) for poll in recent)
        failed_polls = 0
        for poll in reversed(polls):
            own = [a for a in poll if _key_of(a) == wanted]
            if not own:
                continue
            if own[-1].succeeded:
                break
            failed_polls += 1
        keys.append(
            KeyObservation(
                key=ref.url,
                last_success=max(successes, default=None),
                last_failure=max(failures, default=None),
                last_status=latest.status if latest is not None else None,
                dropped=dropped,
                failed_polls=failed_polls,
            )
        )
    return NamespaceObservation(phase, tuple(keys), len(polls))


def exact_revocation(
    phase: ObservedPhase | None, stretches: Sequence[tuple[datetime, datetime]], now: datetime
) -> datetime | None:
    """The first of the service's poll instants that lands where no listed key is usable (`stretches`:
    [start, end) spans, in order), once the phase is known; None when none does, or the phase is not known."""
    if phase is None or not phase.known:
        return None
    for start, end in stretches:
        poll = phase.next_poll(max(start, now))
        if poll < end:
            return poll
    return None

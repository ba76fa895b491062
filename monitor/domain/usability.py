"""Is a key reference usable at instant t, and why not: the Service Bus CMK rules over the world's
timeline, at a point (assess) and as intervals (UsableTime) for the prediction."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from monitor.domain.intervals import Interval, Timeline, intersect
from monitor.domain.key_time import append_key_epoch, exists_intervals, key_intervals
from monitor.domain.model import (
    KeyId,
    KeyRef,
    KeyVersion,
    Namespace,
    name_id,
)
from monitor.domain.states import KeyState, grants_required, union_permissions
from monitor.domain.world import World


class Reason(enum.Enum):
    """Why a key reference is not usable; each value is also the finding code that reports it."""

    VAULT_MISSING = "vault-missing"
    VAULT_FIREWALL = "vault-firewall-blocks-service"
    IDENTITY_MISSING = "identity-missing"
    ACCESS_DENIED = "access-denied"
    KEY_MISSING = "key-missing"
    KEY_DELETED = "key-deleted"
    KEY_DISABLED = "key-disabled"
    KEY_NOT_YET_VALID = "key-not-yet-valid"
    KEY_EXPIRED = "key-expired"
    KEY_OPS_MISSING = "key-ops-missing"


VERSION_REASONS = frozenset({Reason.KEY_DISABLED, Reason.KEY_NOT_YET_VALID, Reason.KEY_EXPIRED, Reason.KEY_OPS_MISSING})


@dataclass(frozen=True, slots=True)
class Assessment:
    """A key reference judged at one instant: the reasons it is unusable (none = usable)."""

    ref: KeyRef
    principal: str | None
    reasons: tuple[Reason, ...]
    version: KeyVersion | None  # the effective version, when the key exists
    # What could not be read to judge the rest: the reference is unknown unless a known reason fails it.
    unknown: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        return not self.reasons and not self.unknown

    @property
    def is_unknown(self) -> bool:
        """No known rule fails, but some rule could not be judged."""
        return not self.reasons and bool(self.unknown)


def assess(world: World, namespace: Namespace, ref: KeyRef, t: datetime) -> Assessment:
    """Judge `ref` of `namespace` at instant t by the five rules of usability."""
    return assess_as(world, ref, namespace.identity.principal_for(ref.identity), t)


def assess_as(world: World, ref: KeyRef, principal: str | None, t: datetime) -> Assessment:
    """`assess` for a reference acting as `principal` (None: its identity is not on the namespace)."""
    vault = world.vault_id(ref.vault)
    key_id = (vault, name_id(ref.name))
    unknown: list[str] = []
    reasons: list[Reason] = []
    vault_blind = world.blind_vaults.get(vault)
    if principal is None:
        reasons.append(Reason.IDENTITY_MISSING)
    if vault_blind is not None:
        unknown.append(vault_blind)  # rules 1 and 2 cannot be judged
    else:
        vault_timeline = world.vaults.get(vault)
        vault_state = vault_timeline.at(t) if vault_timeline is not None else None
        if vault_state is None or not vault_state.exists:
            return Assessment(ref, principal, (Reason.VAULT_MISSING,), None)
        if not vault_state.network.lets_service_in:
            reasons.append(Reason.VAULT_FIREWALL)  # rule 1: Service Bus cannot reach it; the rest still told
        # The same answer as vault_state.grants(principal), without going through the Mapping view.
        if principal is not None and not grants_required(
            union_permissions(world.access[vault].permissions(principal, t), world.key_permissions(key_id, principal))
        ):
            reasons.append(Reason.ACCESS_DENIED)
    key_blind = world.blind_keys.get(key_id)
    if key_blind is not None:
        unknown.append(key_blind)  # rules 3 to 5 cannot be judged
        return Assessment(ref, principal, tuple(reasons), None, tuple(unknown))
    key_state = world.key_at(key_id, t)
    version = None
    if not key_state.exists:
        reasons.append(Reason.KEY_MISSING)
    elif key_state.deleted:
        reasons.append(Reason.KEY_DELETED)
    else:
        version = effective_version(key_state, ref.version, t)
        if version is None:
            reasons.append(Reason.KEY_MISSING)
        else:
            reasons.extend(version_reasons(version, t))
    return Assessment(ref, principal, tuple(reasons), version, tuple(unknown))


def effective_version(key_state: KeyState, version: str | None, t: datetime) -> KeyVersion | None:
    """Rule 4's version at t: the pinned `version` if it exists by then, else (None) the current one."""
    if version is None:
        return key_state.current_version(t)
    pinned = key_state.version(version)
    if pinned is None or pinned.created > t:
        return None
    return pinned


def version_reasons(version: KeyVersion, t: datetime) -> list[Reason]:
    """Rules 4 and 5 for one version at instant t."""
    reasons = []
    if not version.enabled:
        reasons.append(Reason.KEY_DISABLED)
    if version.nbf is not None and t < version.nbf:
        reasons.append(Reason.KEY_NOT_YET_VALID)
    if version.exp is not None and t >= version.exp:
        reasons.append(Reason.KEY_EXPIRED)
    if not version.has_required_ops:
        reasons.append(Reason.KEY_OPS_MISSING)
    return reasons


# Each rule holds on half-open intervals [from, until): a state holds from its change on, a version is
# current from its `created`, valid from `nbf` and until `exp`. So a reference's usable time is the
# intersection of the vault's, the principal's and the key's intervals, computed without judging any
# instant. `assess` stays the reference the intervals must agree with.


class UsableTime:
    """Usable intervals of key references within one window [start, end) of one World.

    A reference is usable where its vault exists and lets Service Bus through its firewall (rule 1), its
    principal holds the permissions
    (rule 2) and the key passes rules 3 to 5: the intersection of those intervals.
    """

    __slots__ = ("_exists", "_whole", "end", "start", "throughout", "world")

    def __init__(self, world: World, start: datetime, end: datetime) -> None:
        self.world = world
        self.start = start
        self.end = end
        self._whole = [(start, end)]
        self.throughout: tuple[Interval, ...] = ((start, end),)
        self._exists: dict[str, list[Interval]] = {}  # vault id -> exists_intervals, shared by its keys

    def of(self, ref: KeyRef, principal: str | None) -> list[Interval]:
        """The intervals in which `ref`, acting as `principal`, is usable: sorted, disjoint, merged."""
        return self.of_key(self.world.key_id(ref), ref.version, principal)

    def of_key(self, key_id: KeyId, version: str | None, principal: str | None) -> list[Interval]:
        """`of` for a reference to key `key_id`, pinned to `version` (None: versionless)."""
        reachable = self._reachable(key_id, principal)
        if not reachable:
            return []
        key = self.world.intervals_of_key(key_id, version, self.start, self.end)
        return key if reachable is self._whole or reachable == self._whole else intersect(reachable, key)

    def of_key_from_start(
        self, key_id: KeyId, version: str | None, principal: str | None
    ) -> tuple[tuple[Interval, ...], KeyVersion | None]:
        """`of_key` as a tuple (`throughout` itself when usable all along), and the version in effect at
        `start` when the reference is usable then (else None): what a prediction needs of each reference,
        with the key looked up once."""
        reachable = self._reachable(key_id, principal)
        if not reachable:
            return (), None
        start, end = self.start, self.end
        entry = self.world.key_entry(key_id)
        intervals: list[Interval]
        if isinstance(entry, Timeline):
            intervals = key_intervals(entry, version, start, end)
        else:
            intervals = []
            append_key_epoch(intervals, entry, version, start, end)
        if not (reachable is self._whole or reachable == self._whole):
            intervals = intersect(reachable, intervals)
        if not intervals:
            return (), None
        first = intervals[0]
        if first[0] != start:
            return tuple(intervals), None
        state = entry.at(start) if isinstance(entry, Timeline) else entry
        in_effect = effective_version(state, version, start)
        if len(intervals) == 1 and first[1] == end:
            return self.throughout, in_effect  # most references: one shared value rather than a copy each
        return tuple(intervals), in_effect

    def _reachable(self, key_id: KeyId, principal: str | None) -> list[Interval]:
        """Where rules 1 and 2 hold for `principal` on the key's vault (`_whole` itself when throughout)."""
        world, start, end, whole = self.world, self.start, self.end, self._whole
        vault = key_id[0]
        history = world.access.get(vault)
        # Nothing counts as usable that could not be seen (the prediction treats such namespaces apart).
        if principal is None or history is None or vault in world.blind_vaults:
            return []
        if world.blind_keys and key_id in world.blind_keys:
            return []
        exists = self._exists.get(vault)
        if exists is None:
            exists = exists_intervals(world.reachable[vault], start, end)
            exists = self._exists[vault] = whole if exists == whole else exists
        extra = world.key_permissions(key_id, principal) if world.key_access else None
        if extra is None and principal not in history.changed:
            # The usual case: permissions no change touches, so granted throughout or never.
            return exists if grants_required(history.initial.get(principal)) else []
        grants = history.grant_intervals(principal, start, end, extra)
        # Skip intersecting when the vault is there throughout.
        return grants if exists is whole else intersect(exists, grants)


def change_instants(world: World, ref: KeyRef, start: datetime, end: datetime) -> list[datetime]:
    """Every instant in (start, end) at which `ref`'s usability may change, sorted."""
    instants: set[datetime] = set()
    vault_timeline = world.vault(ref.vault)
    if vault_timeline is not None:
        instants.update(t for t, _ in vault_timeline.epochs_between(start, end))
    for epoch_start, key_state in world.key(ref.key_id).epochs_between(start, end):
        instants.add(epoch_start)
        instants.update(key_state.instants())
    return sorted(t for t in instants if start < t < end)

"""Is a key reference usable at instant t, and why not: the Service Bus CMK rules over a timeline."""

from __future__ import annotations

import enum
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Generic, TypeVar

from monitor.domain.errors import ScenarioError
from monitor.domain.model import (
    KEEP,
    REQUIRED_PERMISSIONS,
    Change,
    DeleteKey,
    DeleteVault,
    KeyId,
    KeyRef,
    KeyVersion,
    Namespace,
    NewVersion,
    PurgeKey,
    RecoverKey,
    RecoverVault,
    SetAccess,
    Snapshot,
    UpdateVersion,
    name_id,
    vault_id,
)

BEGINNING = datetime.min.replace(tzinfo=UTC)


class Reason(enum.Enum):
    """Why a key reference is not usable; each value is also the finding code that reports it."""

    VAULT_MISSING = "vault-missing"
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
class VaultState:
    """A vault as it is during one epoch of the timeline."""

    uri: str
    exists: bool
    soft_delete: bool
    purge_protection: bool
    rbac: bool
    access: Mapping[str, frozenset[str]]  # principal name_id -> lower-case permissions

    def grants(self, principal: str) -> bool:
        permissions = self.access.get(principal, frozenset())
        return "all" in permissions or permissions >= REQUIRED_PERMISSIONS

    def missing_permissions(self, principal: str) -> tuple[str, ...]:
        permissions = self.access.get(principal, frozenset())
        if "all" in permissions:
            return ()
        spelled = {"get": "get", "wrapkey": "wrapKey", "unwrapkey": "unwrapKey"}
        return tuple(spelled[p] for p in sorted(REQUIRED_PERMISSIONS - permissions))


@dataclass(frozen=True, slots=True)
class KeyState:
    """A key as it is during one epoch of the timeline; versions are sorted by `created`."""

    exists: bool
    deleted: bool
    versions: tuple[KeyVersion, ...]

    def current_version(self, t: datetime) -> KeyVersion | None:
        """The newest version created at or before t (ties: the one listed last)."""
        index = bisect_right(self.versions, t, key=lambda v: v.created)
        return self.versions[index - 1] if index else None

    def version(self, version: str) -> KeyVersion | None:
        wanted = name_id(version)
        for candidate in self.versions:
            if name_id(candidate.version) == wanted:
                return candidate
        return None

    def instants(self) -> Iterator[datetime]:
        """Every instant at which a version's standing can change."""
        for v in self.versions:
            yield v.created
            if v.nbf is not None:
                yield v.nbf
            if v.exp is not None:
                yield v.exp


MISSING_KEY = KeyState(exists=False, deleted=False, versions=())

S = TypeVar("S")


class Timeline(Generic[S]):
    """A piecewise-constant state: `states[i]` holds from `starts[i]` until `starts[i + 1]`."""

    __slots__ = ("starts", "states")

    def __init__(self, initial: S) -> None:
        self.starts: list[datetime] = [BEGINNING]
        self.states: list[S] = [initial]

    def at(self, t: datetime) -> S:
        return self.states[bisect_right(self.starts, t) - 1]

    @property
    def latest(self) -> S:
        return self.states[-1]

    def set_from(self, t: datetime, state: S) -> None:
        """Record that `state` holds from t on; changes must arrive in time order."""
        if self.starts[-1] == t:
            self.states[-1] = state
        else:
            self.starts.append(t)
            self.states.append(state)

    def epochs_between(self, start: datetime, end: datetime) -> Iterator[tuple[datetime, S]]:
        """(epoch start, state) for each epoch overlapping [start, end)."""
        first = bisect_right(self.starts, start) - 1
        for index in range(first, len(self.starts)):
            if self.starts[index] >= end:
                break
            yield self.starts[index], self.states[index]


def _sorted_versions(versions: Iterable[KeyVersion]) -> tuple[KeyVersion, ...]:
    return tuple(sorted(versions, key=lambda v: v.created))


class World:
    """Every vault's and key's state over time: the snapshot with the changes applied in order.

    Raises ScenarioError (with the change's JSON path) for a change that cannot apply.
    """

    def __init__(self, snapshot: Snapshot, changes: Iterable[Change] = ()) -> None:
        self.vaults: dict[str, Timeline[VaultState]] = {}
        self.keys: dict[KeyId, Timeline[KeyState]] = {}
        for vault in snapshot.vaults:
            access = {name_id(p): frozenset(x.lower() for x in perms) for p, perms in vault.access.items()}
            self.vaults[vault.id] = Timeline(
                VaultState(
                    uri=vault.uri,
                    exists=not vault.deleted,
                    soft_delete=vault.soft_delete,
                    purge_protection=vault.purge_protection,
                    rbac=vault.rbac,
                    access=access,
                )
            )
        for key in snapshot.keys:
            self.keys[key.id] = Timeline(
                KeyState(exists=True, deleted=key.deleted, versions=_sorted_versions(key.versions))
            )
        ordered = sorted(enumerate(changes), key=lambda item: item[1].at)
        for index, change in ordered:
            self._apply(index, change)

    def vault(self, uri: str) -> Timeline[VaultState] | None:
        return self.vaults.get(vault_id(uri))

    def key(self, key_id: KeyId) -> Timeline[KeyState]:
        return self.keys.get(key_id) or _MISSING_TIMELINE

    def _apply(self, index: int, change: Change) -> None:
        path = f"$.changes[{index}]"
        vault_timeline = self.vault(change.vault)
        if vault_timeline is None:
            raise ScenarioError(f"{path}.vault", f"unknown vault {change.vault!r} (not in $.vaults)")
        if isinstance(change, SetAccess):
            vault_state = vault_timeline.latest
            access = dict(vault_state.access)
            access[name_id(change.principal)] = frozenset(p.lower() for p in change.permissions)
            vault_timeline.set_from(change.at, replace(vault_state, access=access))
            return
        if isinstance(change, DeleteVault | RecoverVault):
            exists = isinstance(change, RecoverVault)
            vault_timeline.set_from(change.at, replace(vault_timeline.latest, exists=exists))
            return
        key_id = (vault_id(change.vault), name_id(change.key))
        timeline = self.keys.get(key_id)
        if timeline is None:
            if not isinstance(change, NewVersion):
                raise ScenarioError(
                    f"{path}.key",
                    f"unknown key {change.key!r} in vault {change.vault!r} "
                    "(not in $.keys, nor created by an earlier new_version)",
                )
            timeline = self.keys[key_id] = Timeline(MISSING_KEY)
        state: KeyState = timeline.latest
        new_state: KeyState
        if isinstance(change, NewVersion):
            if state.exists and state.version(change.version.version) is not None:
                raise ScenarioError(
                    f"{path}.version.version",
                    f"key {change.key!r} already has version {change.version.version!r}",
                )
            if state.exists:
                new_state = replace(state, versions=_sorted_versions((*state.versions, change.version)))
            else:
                new_state = KeyState(exists=True, deleted=False, versions=(change.version,))
        elif isinstance(change, UpdateVersion):
            new_state = _updated(state, change, path)
        elif isinstance(change, DeleteKey):
            new_state = replace(state, deleted=True)
        elif isinstance(change, RecoverKey):
            new_state = replace(state, deleted=False)
        elif isinstance(change, PurgeKey):
            new_state = MISSING_KEY
        else:  # pragma: no cover - the Change union is exhaustive
            raise AssertionError(change)
        timeline.set_from(change.at, new_state)


def _updated(state: KeyState, change: UpdateVersion, path: str) -> KeyState:
    if not state.exists:
        raise ScenarioError(f"{path}.key", f"key {change.key!r} does not exist at {change.at.isoformat()}")
    if change.version is None:
        target = state.current_version(change.at)
        if target is None:
            raise ScenarioError(f"{path}.version", f"key {change.key!r} has no current version at that time")
    else:
        found = state.version(change.version)
        if found is None:
            raise ScenarioError(f"{path}.version", f"key {change.key!r} has no version {change.version!r}")
        target = found
    updated = target
    if change.enabled is not KEEP:
        updated = replace(updated, enabled=change.enabled)
    if change.nbf is not KEEP:
        updated = replace(updated, nbf=change.nbf)
    if change.exp is not KEEP:
        updated = replace(updated, exp=change.exp)
    if change.key_ops is not KEEP:
        updated = replace(updated, key_ops=change.key_ops)
    versions = tuple(updated if v is target else v for v in state.versions)
    return replace(state, versions=versions)


_MISSING_TIMELINE: Timeline[KeyState] = Timeline(MISSING_KEY)


@dataclass(frozen=True, slots=True)
class Assessment:
    """A key reference judged at one instant: the reasons it is unusable (none = usable)."""

    ref: KeyRef
    principal: str | None
    reasons: tuple[Reason, ...]
    version: KeyVersion | None  # the effective version, when the key exists

    @property
    def usable(self) -> bool:
        return not self.reasons


def assess(world: World, namespace: Namespace, ref: KeyRef, t: datetime) -> Assessment:
    """Judge `ref` of `namespace` at instant t by the five rules of usability."""
    principal = namespace.identity.principal_for(ref.identity)
    vault_timeline = world.vault(ref.vault)
    vault_state = vault_timeline.at(t) if vault_timeline is not None else None
    if vault_state is None or not vault_state.exists:
        return Assessment(ref, principal, (Reason.VAULT_MISSING,), None)
    reasons: list[Reason] = []
    if principal is None:
        reasons.append(Reason.IDENTITY_MISSING)
    elif not vault_state.grants(principal):
        reasons.append(Reason.ACCESS_DENIED)
    key_state = world.key(ref.key_id).at(t)
    if not key_state.exists:
        reasons.append(Reason.KEY_MISSING)
        return Assessment(ref, principal, tuple(reasons), None)
    if key_state.deleted:
        reasons.append(Reason.KEY_DELETED)
        return Assessment(ref, principal, tuple(reasons), None)
    version = _effective_version(key_state, ref, t)
    if version is None:
        reasons.append(Reason.KEY_MISSING)
        return Assessment(ref, principal, tuple(reasons), None)
    reasons.extend(version_reasons(version, t))
    return Assessment(ref, principal, tuple(reasons), version)


def _effective_version(key_state: KeyState, ref: KeyRef, t: datetime) -> KeyVersion | None:
    if ref.version is None:
        return key_state.current_version(t)
    pinned = key_state.version(ref.version)
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

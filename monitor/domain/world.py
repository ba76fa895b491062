"""The world's state over time: vaults, keys, versions and access as a scenario's snapshot and changes
make them, queried at an instant (World) for the usability rules."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from itertools import pairwise
from typing import TypeVar

from monitor.domain.errors import ScenarioError
from monitor.domain.intervals import BEGINNING, Interval, Timeline
from monitor.domain.key_time import MISSING_TIMELINE, append_key_epoch, key_intervals
from monitor.domain.model import (
    KEEP,
    KEY_CHANGES,
    NETWORK_SETTINGS,
    BlindScope,
    Change,
    DeleteKey,
    DeleteVault,
    KeyId,
    KeyRef,
    KeyVersion,
    NewVersion,
    PurgeKey,
    RecoverKey,
    RecoverVault,
    SetAccess,
    SetNetwork,
    Snapshot,
    UpdateVersion,
    key_id_of_url,
    name_id,
    vault_id,
)
from monitor.domain.states import BY_CREATED, MISSING_KEY, AccessAt, AccessHistory, KeyState, VaultState

T = TypeVar("T")


def _sorted_versions(versions: Iterable[KeyVersion]) -> tuple[KeyVersion, ...]:
    if isinstance(versions, tuple):
        if len(versions) < 2:  # most keys: nothing to compare
            return versions
        for earlier, later in pairwise(versions):
            if earlier.created > later.created:
                break
        else:  # already in order (as listed, usually): share the tuple rather than copy it
            return versions
    return tuple(sorted(versions, key=BY_CREATED))


def _with_version(versions: tuple[KeyVersion, ...], new: KeyVersion) -> tuple[KeyVersion, ...]:
    """`versions` plus `new`, sorted by `created` as a stable sort would place it."""
    if not versions or versions[-1].created <= new.created:  # the usual rotation: it is the newest
        return (*versions, new)
    return _sorted_versions((*versions, new))


class World:
    """Every vault's and key's state over time: the snapshot with the changes applied in order.

    Raises ScenarioError (with the change's JSON path) for a change that cannot apply.
    """

    def __init__(self, snapshot: Snapshot, changes: Iterable[Change] = ()) -> None:
        self._load(snapshot)
        changes = tuple(changes)
        try:
            self._apply_by_target(changes)
        except ScenarioError:
            # Report the change that fails first in time order: apply them again, in that order.
            self._load(snapshot)
            self._apply_in_time_order(changes)
            raise  # pragma: no cover - the same change fails either way, so the line above raises

    def _load(self, snapshot: Snapshot) -> None:
        """Every vault's and key's state from the snapshot, before any change."""
        self.vaults: dict[str, Timeline[VaultState]] = {}
        # Rules 1 and 2 over time, per vault id, apart from the VaultStates so that intervals need not
        # walk every epoch of a busy vault: whether it is there for Service Bus (it exists and its firewall
        # lets the service in), and each principal's permissions.
        self.reachable: dict[str, Timeline[bool]] = {}
        self.access: dict[str, AccessHistory] = {}
        # Each key's timeline once a change touches it, else its one state: `key()` wraps that in a
        # fresh one-epoch Timeline when asked. Building ~300,000 timelines that would never change
        # added a million long-lived objects, and the garbage collector's full passes over them cost
        # seconds. One map for both: at this size each lookup misses the processor's caches, and
        # looking in two maps cost about a microsecond per reference.
        self._keys: dict[KeyId, Timeline[KeyState] | KeyState] = {}
        # vault URI as spelled -> vault id: a fleet spells each vault's URI a handful of ways, and
        # references and changes name it hundreds of thousands of times.
        self._vault_ids: dict[str, str] = {}
        # Vaults list one permission set for many principals: lower-case each distinct set once.
        lowered: dict[frozenset[str], frozenset[str]] = {}
        for vault in snapshot.vaults:
            access = {}
            for principal, spelled in vault.access.items():
                perms = frozenset(spelled)  # the very object when it is a frozenset already
                low = lowered.get(perms)
                if low is None:
                    low = lowered[perms] = frozenset(p.lower() for p in perms)
                access[name_id(principal)] = low
            history = self.access[vault.id] = AccessHistory(access)
            state = VaultState(
                uri=vault.uri,
                exists=not vault.deleted,
                soft_delete=vault.soft_delete,
                purge_protection=vault.purge_protection,
                rbac=vault.rbac,
                access=AccessAt(history, BEGINNING),
                network=vault.network,
            )
            self.reachable[vault.id] = Timeline(state.reachable)
            self.vaults[vault.id] = Timeline(state)
        # Permissions granted at a key's own scope (RBAC), per key id and principal; they never change.
        self.key_access: dict[KeyId, dict[str, frozenset[str]]] = {}
        keys, vault_ids = self._keys, self._vault_ids
        for key in snapshot.keys:
            key_vault = vault_ids.get(key.vault)
            if key_vault is None:
                key_vault = self.vault_id(key.vault)
            key_id = (key_vault, name_id(key.name))
            keys[key_id] = KeyState(True, key.deleted, _sorted_versions(key.versions))
            if key.access:
                self.key_access[key_id] = {
                    name_id(p): frozenset(x.lower() for x in perms) for p, perms in key.access.items()
                }
        # What the monitor could not read: rules that depend on it are unknown, not failed.
        self.blind_vaults: dict[str, str] = {}
        self.blind_keys: dict[KeyId, str] = {}
        self.blind_namespaces: dict[str, str] = {}  # by name_id of the ARM id
        for spot in snapshot.blind:
            if spot.scope is BlindScope.NAMESPACE:
                self.blind_namespaces[name_id(spot.target)] = spot.reason
            elif spot.scope is BlindScope.VAULT:
                self.blind_vaults[self.vault_id(spot.target)] = spot.reason
            elif spot.scope is BlindScope.KEY and (blind_key := key_id_of_url(spot.target)) is not None:
                self.blind_keys[blind_key] = spot.reason

    def _apply_in_time_order(self, changes: tuple[Change, ...]) -> None:
        # Ties as listed: a stable sort on `at` alone, with the index kept for errors.
        ats = [change.at for change in changes]
        for index in sorted(range(len(changes)), key=ats.__getitem__):
            self._apply(index, changes[index])

    def _apply_by_target(self, changes: tuple[Change, ...]) -> None:
        """The same World as `_apply_in_time_order`, applying each key's and each vault's changes together.

        A change bears only on its own key, or on its own vault (its existence and access), so each
        target's changes in time order (ties as listed) are all that matter. Target by target, in the
        order the changes first name them, each key's state is still in the processor's caches for its
        next change, and its timeline lies near those of the keys listed beside it, which prediction
        visits next: one pass in time order hops across the fleet at every change.
        """
        by_target: dict[str | KeyId, list[int]] = {}
        vault_ids = self._vault_ids
        for index, change in enumerate(changes):
            vault = vault_ids.get(change.vault)
            if vault is None:
                vault = self.vault_id(change.vault)
            target = (vault, name_id(change.key)) if isinstance(change, KEY_CHANGES) else vault
            indices = by_target.get(target)
            if indices is None:
                by_target[target] = [index]
            else:
                indices.append(index)
        apply = self._apply_to
        for target, indices in by_target.items():
            # The target, worked out above, goes along: each change would otherwise work it out again.
            vault, key_id = (target, None) if isinstance(target, str) else (target[0], target)
            if len(indices) > 1:
                ats = [changes[index].at for index in indices]
                if any(later < earlier for earlier, later in pairwise(ats)):
                    indices.sort(key=lambda index: changes[index].at)  # stable: ties stay as listed
            for index in indices:
                apply(index, changes[index], vault, key_id)

    def vault_id(self, uri: str) -> str:
        """`model.vault_id(uri)`, remembered per spelling."""
        found = self._vault_ids.get(uri)
        if found is None:
            found = self._vault_ids[uri] = vault_id(uri)
        return found

    def key_id(self, ref: KeyRef) -> KeyId:
        """`ref.key_id`, with the vault id remembered."""
        return (self.vault_id(ref.vault), name_id(ref.name))

    def key_permissions(self, key_id: KeyId, principal: str) -> frozenset[str] | None:
        """`principal`'s permissions granted on the key itself, or None."""
        granted = self.key_access.get(key_id)
        return granted.get(principal) if granted is not None else None

    def vault(self, uri: str) -> Timeline[VaultState] | None:
        return self.vaults.get(self.vault_id(uri))

    def key(self, key_id: KeyId) -> Timeline[KeyState]:
        entry = self._keys.get(key_id)
        if entry is None:
            return MISSING_TIMELINE
        return entry if isinstance(entry, Timeline) else Timeline(entry)

    def key_entry(self, key_id: KeyId) -> Timeline[KeyState] | KeyState:
        """The key's timeline once a change touches it, else its one state (MISSING_KEY: no such key)."""
        return self._keys.get(key_id, MISSING_KEY)

    def key_at(self, key_id: KeyId, t: datetime) -> KeyState:
        """`key(key_id).at(t)`, without building a timeline for a key no change touches."""
        entry = self._keys.get(key_id, MISSING_KEY)
        return entry.at(t) if isinstance(entry, Timeline) else entry

    def intervals_of_key(self, key_id: KeyId, version: str | None, start: datetime, end: datetime) -> list[Interval]:
        """`key_intervals(key(key_id), ...)`, without building a timeline for a key no change touches."""
        entry = self._keys.get(key_id, MISSING_KEY)
        if isinstance(entry, Timeline):
            return key_intervals(entry, version, start, end)
        intervals: list[Interval] = []
        append_key_epoch(intervals, entry, version, start, end)
        return intervals

    def _apply(self, index: int, change: Change) -> None:
        vault = self.vault_id(change.vault)
        key_id = (vault, name_id(change.key)) if isinstance(change, KEY_CHANGES) else None
        self._apply_to(index, change, vault, key_id)

    def _apply_to(self, index: int, change: Change, vault: str, key_id: KeyId | None) -> None:
        """Apply `change`, whose vault id is `vault` and key id `key_id` (None: not a key change)."""
        vault_timeline = self.vaults.get(vault)
        if vault_timeline is None:
            raise ScenarioError(f"$.changes[{index}].vault", f"unknown vault {change.vault!r} (not in $.vaults)")
        if key_id is None:
            self._apply_to_vault(change, vault, vault_timeline)
            return
        entry = self._keys.get(key_id)
        if isinstance(entry, Timeline):
            timeline = entry
        elif entry is not None:  # the first change to a snapshot key: from now on it has a timeline
            timeline = self._keys[key_id] = Timeline(entry)
        elif isinstance(change, NewVersion):
            timeline = self._keys[key_id] = Timeline(MISSING_KEY)
        else:
            assert isinstance(change, KEY_CHANGES)  # noqa: S101 - narrows the type; holds by construction
            raise ScenarioError(
                f"$.changes[{index}].key",
                f"unknown key {change.key!r} in vault {change.vault!r} "
                "(not in $.keys, nor created by an earlier new_version)",
            )
        state: KeyState = timeline.states[-1]
        new_state: KeyState
        if isinstance(change, NewVersion):
            if state.exists and state.version(change.version.version) is not None:
                raise ScenarioError(
                    f"$.changes[{index}].version.version",
                    f"key {change.key!r} already has version {change.version.version!r}",
                )
            # KeyState(...) rather than dataclasses.replace: the same value, at a third of the cost.
            if state.exists:
                new_state = KeyState(True, state.deleted, _with_version(state.versions, change.version))
            else:
                new_state = KeyState(exists=True, deleted=False, versions=(change.version,))
        elif isinstance(change, UpdateVersion):
            new_state = _updated(state, change, f"$.changes[{index}]")
        elif isinstance(change, DeleteKey):
            new_state = KeyState(state.exists, True, state.versions)
        elif isinstance(change, RecoverKey):
            new_state = KeyState(state.exists, False, state.versions)
        elif isinstance(change, PurgeKey):
            new_state = MISSING_KEY
        else:  # pragma: no cover - the Change union is exhaustive
            raise AssertionError(change)
        timeline.set_from(change.at, new_state)

    def _apply_to_vault(self, change: Change, vault: str, vault_timeline: Timeline[VaultState]) -> None:
        if isinstance(change, SetAccess):
            history = self.access[vault]
            history.set_from(change.at, name_id(change.principal), frozenset(p.lower() for p in change.permissions))
            # A new epoch whose map is the history as of change.at: the state before it keeps its own view.
            vault_timeline.set_from(change.at, replace(vault_timeline.latest, access=AccessAt(history, change.at)))
        elif isinstance(change, (DeleteVault, RecoverVault)):  # a tuple: isinstance of a union costs more
            state = replace(vault_timeline.latest, exists=isinstance(change, RecoverVault))
            vault_timeline.set_from(change.at, state)
            self.reachable[vault].set_from(change.at, state.reachable)
        elif isinstance(change, SetNetwork):
            network = _with_set(vault_timeline.latest.network, change, NETWORK_SETTINGS)
            state = replace(vault_timeline.latest, network=network)
            vault_timeline.set_from(change.at, state)
            self.reachable[vault].set_from(change.at, state.reachable)
        else:  # pragma: no cover - every other change is a key change
            raise AssertionError(change)


VERSION_SETTINGS = ("enabled", "nbf", "exp", "key_ops")  # what update_version sets


def _with_set(value: T, change: UpdateVersion | SetNetwork, fields: tuple[str, ...]) -> T:
    """`value` with each of `fields` the change sets (those not KEEP) taken from it."""
    changed = {name: new for name in fields if (new := getattr(change, name)) is not KEEP}
    return replace(value, **changed) if changed else value  # type: ignore[type-var]


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
    updated = _with_set(target, change, VERSION_SETTINGS)
    versions = tuple(updated if v is target else v for v in state.versions)
    return KeyState(state.exists, state.deleted, versions)

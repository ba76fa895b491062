"""What a vault, a key and its access are at one instant (VaultState, KeyState, AccessAt), and access
over time (AccessHistory): the values the world's timelines hold."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import NamedTuple

from monitor.domain.intervals import Interval, Timeline, merge_append
from monitor.domain.model import (
    OPEN_NETWORK,
    REQUIRED_PERMISSIONS,
    KeyVersion,
    VaultNetwork,
    name_id,
)
from monitor.domain.names import ascii_fold

BY_CREATED = attrgetter("created")  # a version's sort key; C-level, unlike a lambda


@dataclass(frozen=True, slots=True)
class VaultState:
    """A vault as it is during one epoch of the timeline."""

    uri: str
    exists: bool
    soft_delete: bool
    purge_protection: bool
    rbac: bool
    access: Mapping[str, frozenset[str]]  # principal name_id -> lower-case permissions
    network: VaultNetwork = OPEN_NETWORK

    @property
    def reachable(self) -> bool:
        """Rule 1: the vault exists and Service Bus gets through its firewall."""
        return self.exists and self.network.lets_service_in

    def grants(self, principal: str) -> bool:
        permissions = self.access.get(principal, frozenset())
        return "all" in permissions or permissions >= REQUIRED_PERMISSIONS

    def missing_permissions(self, principal: str) -> tuple[str, ...]:
        permissions = self.access.get(principal, frozenset())
        if "all" in permissions:
            return ()
        spelled = {"get": "get", "wrapkey": "wrapKey", "unwrapkey": "unwrapKey"}
        return tuple(spelled[p] for p in sorted(REQUIRED_PERMISSIONS - permissions))


class KeyState(NamedTuple):
    """A key as it is during one epoch of the timeline; versions are sorted by `created`.

    A NamedTuple rather than a frozen dataclass: a World builds one for every key of the snapshot and
    every key change, 400,000 for a fleet of 100,000 namespaces, at half the cost each.
    """

    exists: bool
    deleted: bool
    versions: tuple[KeyVersion, ...]

    def current_version(self, t: datetime) -> KeyVersion | None:
        """The newest version created at or before t (ties: the one listed last)."""
        versions = self.versions
        if versions and versions[-1].created <= t:  # nearly always: no search
            return versions[-1]
        index = bisect_right(self.versions, t, key=BY_CREATED)
        return self.versions[index - 1] if index else None

    def version(self, version: str) -> KeyVersion | None:
        wanted = name_id(version)
        for candidate in self.versions:
            if ascii_fold(candidate.version.strip()) == wanted:  # name_id, inline: each new version checks them all
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


def grants_required(permissions: frozenset[str] | None) -> bool:
    """Rule 2 for one principal's lower-case permissions on a vault (None: it has no entry)."""
    return permissions is not None and ("all" in permissions or permissions >= REQUIRED_PERMISSIONS)


class AccessHistory:
    """One vault's effective key permissions per principal, over time.

    A set_access changes one principal. Recording each change against that principal alone, rather
    than copying the vault's whole access map into a new VaultState, keeps a vault with many
    principals and many changes linear in size: with 15,000 principals on a vault, a copy per
    change cost over a megabyte each.
    """

    __slots__ = ("changed", "initial")

    def __init__(self, initial: Mapping[str, frozenset[str]]) -> None:
        self.initial = initial  # principal name_id -> lower-case permissions, before any change
        # Only principals some change touched; None in a timeline means "no entry".
        self.changed: dict[str, Timeline[frozenset[str] | None]] = {}

    def set_from(self, t: datetime, principal: str, permissions: frozenset[str]) -> None:
        """Record `principal`'s permissions from t on; changes must arrive in time order."""
        timeline = self.changed.get(principal)
        if timeline is None:
            timeline = self.changed[principal] = Timeline(self.initial.get(principal))
        timeline.set_from(t, permissions)

    def permissions(self, principal: str, t: datetime) -> frozenset[str] | None:
        """`principal`'s permissions at t, or None when it has no entry."""
        timeline = self.changed.get(principal)
        return self.initial.get(principal) if timeline is None else timeline.at(t)

    def principals(self, t: datetime) -> Iterator[str]:
        """Every principal with an entry at t: those of the snapshot, then those changes added."""
        for principal in self.initial:
            if self.permissions(principal, t) is not None:
                yield principal
        for principal in self.changed:
            if principal not in self.initial and self.permissions(principal, t) is not None:
                yield principal

    def grant_intervals(
        self, principal: str, start: datetime, end: datetime, extra: frozenset[str] | None = None
    ) -> list[Interval]:
        """The intervals within [start, end) during which `principal` holds get, wrapKey and unwrapKey.

        `extra`: permissions granted on the key itself (RBAC at key scope), which hold throughout.
        """
        timeline = self.changed.get(principal)
        if timeline is None:
            return [(start, end)] if grants_required(union_permissions(self.initial.get(principal), extra)) else []
        intervals: list[Interval] = []
        for epoch_start, epoch_end, permissions in timeline.epochs_within(start, end):
            if grants_required(union_permissions(permissions, extra)):
                merge_append(intervals, epoch_start, epoch_end)
        return intervals


def union_permissions(permissions: frozenset[str] | None, extra: frozenset[str] | None) -> frozenset[str] | None:
    if extra is None:
        return permissions
    return extra if permissions is None else permissions | extra


class AccessAt(Mapping[str, frozenset[str]]):
    """A vault's access map as it stands at one instant: a read-only view of its AccessHistory."""

    __slots__ = ("_at", "_history")

    def __init__(self, history: AccessHistory, at: datetime) -> None:
        self._history = history
        self._at = at

    def __getitem__(self, principal: str) -> frozenset[str]:
        permissions = self._history.permissions(principal, self._at)
        if permissions is None:
            raise KeyError(principal)
        return permissions

    def __iter__(self) -> Iterator[str]:
        return self._history.principals(self._at)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"AccessAt({dict(self)!r})"

"""The sandbox's Azure state: a Scenario's World plus the changes made since, and what ARM keeps beside it.

The model: the scenario's snapshot and its change list are the single source of truth for vaults and
keys. Every mutation an API call makes (rotate, update, delete, recover, ...) is appended to that list
as a Change at the sandbox clock's instant, and the World is rebuilt from snapshot + changes, so a
request at instant t sees `world.vault(uri).at(t)` and `world.key(id).at(t)` exactly as `keyhealth
simulate` would. What the scenario format has no place for is kept beside it: Service Bus namespace
documents (mutable JSON, edited by PUT/PATCH), per-version tags, rotation policies and when
attributes were last written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from monitor.domain.errors import ChangeRejectedError, ScenarioError, UnknownVaultError
from monitor.domain.model import (
    KEY_CHANGES,
    Change,
    DeleteKey,
    KeyId,
    KeyVersion,
    NewVersion,
    Scenario,
    UpdateVersion,
    is_managed_hsm,
    name_id,
    vault_id,
    vault_short_name,
)
from monitor.domain.names import ascii_fold
from monitor.domain.states import KeyState, VaultState
from monitor.domain.world import World
from monitor.sandbox.resources import (
    disaster_recovery_document,
    namespace_document,
    partner_document,
    stable_uuid,
    subscription_of,
)

DEFAULT_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
DEFAULT_TENANT = "72f988bf-0000-4a5b-9c8d-000000000001"
VAULT_RESOURCE_GROUP = "rg-keyvaults"
# Namespaces and vaults carry no creation time in a scenario; this far before `now` is as good as any.
RESOURCE_AGE = timedelta(days=180)

ChangeListener = Callable[[Change], None]


@dataclass(frozen=True, slots=True)
class VaultInfo:
    """Where a scenario vault lives: its URI, host, ARM name, subscription and resource id."""

    uri: str  # as the scenario spells it, without a trailing slash
    id: str  # model.vault_id(uri)
    host: str  # lower-case host name: kv-prod.vault.azure.net
    name: str  # the first label of the host
    subscription: str
    resource_id: str
    managed_hsm: bool


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """A key's rotation policy as last written, and when."""

    document: Mapping[str, Any]  # lifetimeActions and attributes.expiryTime as Key Vault takes them
    created: datetime
    updated: datetime


def current_version(state: KeyState, t: datetime) -> KeyVersion | None:
    """The key's version current at t: the newest created at or before t (ties: the one listed last)."""
    best: KeyVersion | None = None
    for version in state.versions:
        if version.created <= t and (best is None or version.created >= best.created):
            best = version
    return best


def find_version(state: KeyState, version: str, t: datetime) -> KeyVersion | None:
    """The version named `version` (case-insensitively) if it exists at t."""
    wanted = name_id(version)
    for candidate in state.versions:
        if name_id(candidate.version) == wanted and candidate.created <= t:
            return candidate
    return None


def visible_versions(state: KeyState, t: datetime) -> list[KeyVersion]:
    """The versions created at or before t, oldest first."""
    return [v for v in state.versions if v.created <= t]


class SandboxState:
    """Thread-safe: the server thread answers requests while a test moves the clock or adds namespaces."""

    def __init__(self, scenario: Scenario, *, tenant_id: str = DEFAULT_TENANT) -> None:
        self.scenario = scenario
        self.tenant_id = tenant_id
        self._lock = threading.RLock()
        self._changes: tuple[Change, ...] = tuple(scenario.changes)
        self._world = World(scenario.snapshot, self._changes)
        self._listeners: list[ChangeListener] = []

        snapshot = scenario.snapshot
        created = scenario.now - RESOURCE_AGE
        self._namespaces: dict[str, dict[str, Any]] = {
            n.id.lower(): namespace_document(n, tenant_id=tenant_id, created=created) for n in snapshot.namespaces
        }
        # Geo-DR: each pairing's entry on both namespaces; a partner the scenario does not list is served too
        # (unless it is one the monitor could not read), with the identities the pairing gives it.
        self._pairings: dict[str, list[dict[str, Any]]] = {}
        for n in snapshot.namespaces:
            pairing = n.geo_dr
            if pairing is None:
                continue
            self._pairings.setdefault(n.id.lower(), []).append(
                disaster_recovery_document(n.id, pairing.alias, pairing.partner, pairing.role)
            )
            if pairing.partner.lower() not in self._namespaces and pairing.partner_blind is None:
                self._namespaces[pairing.partner.lower()] = partner_document(
                    pairing, tenant_id=tenant_id, created=created
                )
            partner_role = "secondary" if pairing.is_primary else "primary"
            self._pairings.setdefault(pairing.partner.lower(), []).append(
                disaster_recovery_document(pairing.partner, pairing.alias, n.id, partner_role)
            )
        scenario_subscriptions = _unique(subscription_of(n.id) for n in snapshot.namespaces)
        first_subscription = scenario_subscriptions[0] if scenario_subscriptions else DEFAULT_SUBSCRIPTION
        self._vaults: dict[str, VaultInfo] = {}
        for vault in snapshot.vaults:
            referencing = next(
                (n.id for n in snapshot.namespaces for ref in n.keys if vault_id(ref.vault) == vault.id), None
            )
            subscription = (subscription_of(referencing) if referencing else None) or first_subscription
            name = vault_short_name(vault.uri)
            kind = "managedHSMs" if is_managed_hsm(vault.uri) else "vaults"
            self._vaults[vault.id] = VaultInfo(
                uri=vault.uri.strip().rstrip("/"),
                id=vault.id,
                host=(urlsplit(vault.uri.strip()).hostname or name).lower(),
                name=name,
                subscription=subscription,
                resource_id=(
                    f"/subscriptions/{subscription}/resourceGroups/{VAULT_RESOURCE_GROUP}"
                    f"/providers/Microsoft.KeyVault/{kind}/{name}"
                ),
                managed_hsm=is_managed_hsm(vault.uri),
            )
        self._by_host = {info.host: info for info in self._vaults.values()}

        # Keys as named where first seen, and each key's changes, for `updated` and `deletedDate`.
        self._key_names: dict[KeyId, str] = {}
        self._vault_keys: dict[str, list[KeyId]] = {}  # the same keys by vault id: a listing reads one vault's
        self._key_changes: dict[KeyId, list[Change]] = {}
        self._hsm_keys: set[str] = set()  # vault ids with an HSM-protected key: those are Premium vaults
        for key in snapshot.keys:
            self._name_key(key.id, key.name)
            if any((v.kty or "").upper().endswith("-HSM") for v in key.versions):
                self._hsm_keys.add(key.id[0])
        for change in self._changes:
            self._index(change)

        self._tags: dict[tuple[KeyId, str], tuple[dict[str, str], datetime]] = {}
        self._policies: dict[KeyId, RotationPolicy] = {}
        # A scenario's key tags (an extension) stand for the tags of each of its versions, new ones included.
        self._key_tags: dict[KeyId, dict[str, str]] = {key.id: dict(key.tags) for key in snapshot.keys if key.tags}
        for key in snapshot.keys:
            if key.rotation_policy is not None:
                self._policies[key.id] = RotationPolicy(dict(key.rotation_policy), scenario.now, scenario.now)

    # --- the timeline ---------------------------------------------------------------------------------

    @property
    def world(self) -> World:
        """The World of the snapshot and every change so far (rebuilt after each mutation)."""
        return self._world

    @property
    def changes(self) -> tuple[Change, ...]:
        """The scenario's changes followed by those the sandbox appended, in the order added."""
        return self._changes

    def apply(self, change: Change) -> None:
        """Append `change` to the timeline and rebuild the World; then tell the listeners.

        Raises ChangeRejectedError (and keeps the timeline as it was) when the World refuses it.
        """
        with self._lock:
            candidate = (*self._changes, change)
            try:
                world = World(self.scenario.snapshot, candidate)
            except ScenarioError as error:
                raise ChangeRejectedError(change, error.problem) from None
            self._changes, self._world = candidate, world
            self._index(change)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(change)

    def subscribe(self, listener: ChangeListener) -> None:
        """Call `listener(change)` after every change `apply` appends."""
        with self._lock:
            self._listeners.append(listener)

    def _index(self, change: Change) -> None:
        if isinstance(change, KEY_CHANGES):
            key_id: KeyId = (vault_id(change.vault), name_id(change.key))
            self._key_changes.setdefault(key_id, []).append(change)
            if isinstance(change, NewVersion):
                self._name_key(key_id, change.key)
                if (change.version.kty or "").upper().endswith("-HSM"):
                    self._hsm_keys.add(key_id[0])

    def _name_key(self, key_id: KeyId, name: str) -> None:
        if key_id not in self._key_names:
            self._key_names[key_id] = name
            self._vault_keys.setdefault(key_id[0], []).append(key_id)

    def vault_state(self, info: VaultInfo, t: datetime) -> VaultState | None:
        timeline = self._world.vault(info.uri)
        return timeline.at(t) if timeline is not None else None

    def vault_exists(self, info: VaultInfo, t: datetime) -> bool:
        state = self.vault_state(info, t)
        return state is not None and state.exists

    def key_state(self, key_id: KeyId, t: datetime) -> KeyState:
        return self._world.key(key_id).at(t)

    def key_ids(self, info: VaultInfo | None = None) -> list[KeyId]:
        """Every key the timeline ever names (in `info`'s vault), in the order first seen."""
        with self._lock:
            return list(self._key_names) if info is None else list(self._vault_keys.get(info.id, ()))

    def key_name(self, key_id: KeyId) -> str:
        """The key's name as first spelled."""
        return self._key_names.get(key_id, key_id[1])

    def key_changes(self, key_id: KeyId) -> list[Change]:
        with self._lock:
            return list(self._key_changes.get(key_id, ()))

    def has_hsm_keys(self, info: VaultInfo) -> bool:
        return info.id in self._hsm_keys

    # --- when things happened -------------------------------------------------------------------------

    def updated(self, key_id: KeyId, version: KeyVersion, t: datetime) -> datetime:
        """When the version's attributes or tags were last written, as of t (its creation at first)."""
        latest = version.created
        wanted = name_id(version.version)
        for change in self.key_changes(key_id):
            if not isinstance(change, UpdateVersion) or change.at > t or change.at <= latest:
                continue
            target = change.version
            if target is None:  # the version current when the change applied
                resolved = current_version(self.key_state(key_id, change.at), change.at)
                target = resolved.version if resolved else None
            if target is not None and name_id(target) == wanted:
                latest = change.at
        tagged = self._tags.get((key_id, wanted))
        if tagged is not None and latest < tagged[1] <= t:
            latest = tagged[1]
        return latest

    def deleted_at(self, key_id: KeyId, t: datetime) -> datetime:
        """When the key was last soft-deleted, as of t (the scenario's `now` when the snapshot says deleted)."""
        when = min(self.scenario.now, t)
        for change in self.key_changes(key_id):
            if isinstance(change, DeleteKey) and change.at <= t:
                when = change.at
        return when

    # --- tags and rotation policies -------------------------------------------------------------------

    def tags(self, key_id: KeyId, version: str) -> dict[str, str] | None:
        entry = self._tags.get((key_id, name_id(version)))
        if entry is None:
            inherited = self._key_tags.get(key_id)
            return dict(inherited) if inherited else None
        return dict(entry[0])

    def set_tags(self, key_id: KeyId, version: str, tags: Mapping[str, str], t: datetime) -> None:
        with self._lock:
            self._tags[(key_id, name_id(version))] = (dict(tags), t)

    def rotation_policy(self, key_id: KeyId) -> RotationPolicy | None:
        return self._policies.get(key_id)

    def set_rotation_policy(self, key_id: KeyId, document: Mapping[str, Any], t: datetime) -> RotationPolicy:
        with self._lock:
            previous = self._policies.get(key_id)
            policy = RotationPolicy(dict(document), previous.created if previous else t, t)
            self._policies[key_id] = policy
            return policy

    # --- vaults ---------------------------------------------------------------------------------------

    @property
    def vaults(self) -> tuple[VaultInfo, ...]:
        return tuple(self._vaults.values())

    def vault_by_id(self, vault: str) -> VaultInfo | None:
        """The vault whose `model.vault_id` is `vault`."""
        return self._vaults.get(vault)

    def vault_by_host(self, host: str) -> VaultInfo | None:
        return self._by_host.get(ascii_fold(host))

    def vault_by_name(self, name: str) -> VaultInfo | None:
        wanted = ascii_fold(name)
        return next((info for info in self._vaults.values() if ascii_fold(info.name) == wanted), None)

    def vault(self, uri_or_host: str) -> VaultInfo:
        """The vault named by its URI (any spelling), its host or its ARM name.

        Raises UnknownVaultError when the scenario has no such vault.
        """
        text = uri_or_host.strip()
        found = self._vaults.get(vault_id(text)) if "://" in text else None
        if found is None:
            host = (urlsplit(text).hostname or "") if "://" in text else text.rstrip("/")
            found = self.vault_by_host(host) or self.vault_by_name(host)
        if found is None:
            raise UnknownVaultError(uri_or_host)
        return found

    # --- namespaces and subscriptions -----------------------------------------------------------------

    def namespaces(self) -> list[dict[str, Any]]:
        """Every namespace document (scenario ones first, then those added), as stored: do not mutate."""
        with self._lock:
            return list(self._namespaces.values())

    def namespace(self, resource_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._namespaces.get(resource_id.lower())

    def disaster_recovery_configs(self, namespace_id: str) -> list[dict[str, Any]]:
        """The namespace's Geo-DR configurations (empty when it has none)."""
        with self._lock:
            return list(self._pairings.get(namespace_id.lower(), ()))

    def put_namespace(self, document: dict[str, Any]) -> None:
        """Store (or replace) the namespace document under its `id`."""
        with self._lock:
            self._namespaces[str(document["id"]).lower()] = document

    def subscriptions(self) -> list[str]:
        """Subscription ids, in order of first appearance among the namespaces, else the default one."""
        found = _unique(subscription_of(str(d.get("id", ""))) for d in self.namespaces())
        vault_subscriptions = _unique(info.subscription for info in self._vaults.values())
        return _unique([*found, *vault_subscriptions]) or [DEFAULT_SUBSCRIPTION]

    def principal_id_for(self, *parts: str) -> str:
        """A stable principal id for an identity ARM creates (a new system- or user-assigned identity)."""
        return stable_uuid("principal", *parts)


def _unique(values: Iterable[str | None]) -> list[str]:
    seen: dict[str, str] = {}
    for value in values:
        if value and value.lower() not in seen:
            seen[value.lower()] = value
    return list(seen.values())

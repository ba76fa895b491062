"""The seams between the service and the outside world, as Protocols; adapters and fakes implement them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from monitor.domain.alert import Alert
from monitor.domain.incidents import Level
from monitor.domain.model import GeoPairing, Key, KeyRef, KeyVersion, Namespace, Observation, Snapshot, Vault

__all__ = [
    "AccessObserver",
    "AccessReader",
    "AlertSink",
    "Clock",
    "FleetListing",
    "InventoryReader",
    "KeyReader",
    "KeyRemediator",
    "PairingReader",
    "VaultReading",
]


@dataclass(frozen=True, slots=True)
class VaultReading:
    """What ARM says about the vaults a fleet's namespaces list."""

    found: dict[str, Vault] = field(default_factory=dict)  # vault_id -> Vault (deleted ones with deleted=True)
    # vault_id -> key name_id -> principal -> permissions granted at that key's own scope (RBAC)
    key_access: dict[str, dict[str, dict[str, frozenset[str]]]] = field(default_factory=dict)
    blind: dict[str, str] = field(default_factory=dict)  # vault_id -> why it could not be read


@dataclass(frozen=True, slots=True)
class FleetListing:
    """The CMK namespaces of some subscriptions, and the subscriptions that could not be listed."""

    namespaces: list[Namespace] = field(default_factory=list)
    blind: dict[str, str] = field(default_factory=dict)  # subscription -> why it could not be listed
    source: str = "arm"  # "arm" (a listing per subscription) or "resource-graph" (one paged query)


@dataclass(slots=True)
class ObservationReading:
    """What one look at the service's own key accesses found, per namespace id, and what it cost."""

    observations: dict[str, Observation] = field(default_factory=dict)
    queries: int = 0
    rows: int = 0
    rejected_rows: int = 0
    failed_queries: int = 0
    workspaces: int = 0
    settings_reads: int = 0
    seconds: float = 0.0


class AccessObserver(Protocol):
    """Reads what the service itself did with the snapshot's keys: its calls, as the vaults' audit logs show."""

    async def observe(self, snapshot: Snapshot, *, now: datetime) -> ObservationReading:
        """An Observation for every namespace of `snapshot` (unobserved, with the reason, where it could not
        look); never raises for what it could not read."""
        ...


class Clock(Protocol):
    """Where the current time comes from (the domain never reads it itself)."""

    def now(self) -> datetime: ...


PageCallback = Callable[[Sequence[Namespace]], None]


class InventoryReader(Protocol):
    """Lists subscriptions and the CMK-encrypted Service Bus namespaces in them."""

    async def list_subscriptions(self) -> list[str]:
        """Every subscription the credential can see. Raises ReadError."""
        ...

    async def list_namespaces(self, subscription: str) -> list[Namespace]:
        """Premium namespaces with keySource Microsoft.KeyVault. Raises ReadError."""
        ...

    async def list_namespaces_in(
        self, subscriptions: Sequence[str], *, on_page: PageCallback | None = None
    ) -> FleetListing:
        """Those of every subscription given; one that cannot be listed lands in `blind`, never raises.

        `on_page` is told each page's namespaces as it is read, so work on them can overlap the next page's
        wait. Only a head start: a listing that starts again another way tells some again, or some that the
        listing returned does not hold; the listing returned is the one that counts."""
        ...


class PairingReader(Protocol):
    """Reads a namespace's Geo-DR pairing and the identities of its partner."""

    async def read_pairing(self, namespace: Namespace) -> GeoPairing | None:
        """The pairing (None: none). Raises ReadError when the namespace's configurations cannot be listed;
        a partner that cannot be read is a pairing with `partner_blind` set."""
        ...


class KeyReader(Protocol):
    """Reads keys from the vaults' data plane."""

    async def get_key(self, vault_uri: str, name: str, *, pinned_versions: Iterable[str] = ()) -> Key | None:
        """The key with its versions (None when it does not exist at all). Raises ReadError."""
        ...

    async def revalidate(self, vault_uri: str, names: Sequence[str]) -> dict[str, Key]:
        """Of `names` (keys in one vault), those this reader read in full before and can confirm unchanged
        more cheaply than by reading each again, by name_id. Read the rest with get_key. Never raises."""
        ...

    def revalidatable(self) -> dict[str, list[str]]:
        """By vault URI, the names of the keys `revalidate` could confirm now: known before the fleet is
        listed, so their listings can be read while it is."""
        ...

    def take_changed_records(self) -> dict[str, dict[str, Any]]:
        """What this reader learnt of each vault's keys since the last call (JSON-ready, by vault id), for the
        state store, so another instance's `recall` lets it revalidate them too."""
        ...

    def recall(self, records_by_vault: Mapping[str, Mapping[str, Any]]) -> int:
        """Take in records another instance stored; what this reader read itself wins. Returns how many."""
        ...


class AccessReader(Protocol):
    """Reads vault properties and the effective key permissions of principals on them."""

    async def read_vaults(self, vault_uris: Sequence[str], *, subscriptions: Sequence[str]) -> VaultReading:
        """What ARM says about each vault; unreadable ones land in `blind`, never raise for one vault."""
        ...


@dataclass(frozen=True, slots=True)
class SinkSpec:
    """One configured sink, with its secrets read from their settings. repr() shows no secret."""

    name: str
    kind: str
    min_level: Level = Level.WARNING
    url: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    routing_key: str | None = field(default=None, repr=False)
    endpoint: str | None = None
    key: str | None = field(default=None, repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every value that must never be logged (the URL too: Teams and Slack URLs carry tokens)."""
        return tuple(s for s in (self.url, self.secret, self.routing_key, self.key) if s)


class AlertSink(Protocol):
    """Somewhere alerts go: a webhook, Teams, Slack, PagerDuty, an Event Grid topic."""

    @property
    def name(self) -> str:
        """The sink's name in the alert configuration (routes and the outbox refer to it)."""
        ...

    @property
    def kind(self) -> str:
        """webhook, teams, slack, pagerduty or eventgrid."""
        ...

    async def send(self, alert: Alert, *, now: datetime) -> None:
        """Deliver one alert, worded as of `now`. Raises DeliveryError (never with a secret in it)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class KeyRemediator(Protocol):
    """The writes remediation may make: rotate or recover a key, make a namespace's reference versionless.

    Nothing here disables, deletes or purges. Every method raises RemediationError (with `denied` set
    when the monitor's identity lacks the permission) and never with a secret in it.
    """

    async def get_rotation_policy(self, vault_uri: str, name: str) -> Mapping[str, object] | None:
        """The key's rotation policy as Key Vault returns it (lifetimeActions, attributes.expiryTime)."""
        ...

    async def rotate_key(self, vault_uri: str, name: str) -> str:
        """Key Vault's own rotation (the policy decides the new version's expiry). Returns the new version."""
        ...

    async def create_key_version(self, vault_uri: str, name: str, *, like: KeyVersion, expires_on: datetime) -> str:
        """A new version of the same type, size and operations, expiring at `expires_on`. Returns it."""
        ...

    async def recover_key(self, vault_uri: str, name: str) -> None:
        """Recover the soft-deleted key (it comes back with all its versions)."""
        ...

    async def get_key_references(self, namespace_id: str) -> list[KeyRef]:
        """The namespace's encryption.keyVaultProperties as ARM has them now."""
        ...

    async def unpin(self, namespace_id: str, vault_uri: str, name: str) -> None:
        """Make the namespace's reference to that key versionless, keeping its other references as they are."""
        ...


class BearerValidator(Protocol):
    """Checks the bearer tokens `serve` accepts (Microsoft Entra ID, against the tenant's published keys)."""

    async def validate(self, token: str) -> object:
        """Who the token says is calling. Raises TokenError saying why it is refused (never quoting it)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...

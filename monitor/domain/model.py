"""Frozen values for the Azure state that decides customer-managed-key (CMK) health."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import ClassVar
from urllib.parse import urlsplit

from monitor.domain.names import ascii_fold

# Service Bus polls every listed key at this interval, at a phase nobody outside the service knows.
POLL_INTERVAL = timedelta(seconds=300)
MAX_KEYS_PER_NAMESPACE = 3
REQUIRED_PERMISSIONS = frozenset({"get", "wrapkey", "unwrapkey"})
REQUIRED_KEY_OPS = frozenset({"wrapkey", "unwrapkey"})


# A fleet names its few vaults and keys hundreds of thousands of times a poll: each spelling is folded once.
_FOLDED = 1 << 17


@lru_cache(maxsize=_FOLDED)
def vault_id(uri: str) -> str:
    """The comparable form of a vault URI: ASCII case folded (as Azure compares), trailing slashes removed."""
    return ascii_fold(uri.strip().rstrip("/"))


@lru_cache(maxsize=_FOLDED)
def name_id(name: str) -> str:
    """The comparable form of a key, version, principal or resource name: ASCII case folded, never Unicode
    (`str.lower()` turns U+212A KELVIN SIGN into `k`, a match Key Vault would never make)."""
    return ascii_fold(name.strip())


# A fleet names a handful of vaults hundreds of thousands of times: parse each spelling once.
@lru_cache(maxsize=4096)
def vault_short_name(uri: str) -> str:
    """The vault's (or Managed HSM's) name, the first label of its host name."""
    host = urlsplit(uri.strip()).hostname or uri.strip().rstrip("/")
    return host.split(".", 1)[0]


@lru_cache(maxsize=4096)
def is_managed_hsm(uri: str) -> bool:
    """True when the URI names a Managed HSM rather than a Key Vault."""
    return ".managedhsm." in uri.lower()


def key_url(vault_uri: str, key_name: str) -> str:
    """The key's identifier without a version, as Key Vault spells it."""
    return f"{vault_uri.strip().rstrip('/')}/keys/{key_name}"


KeyId = tuple[str, str]
"""(vault_id, name_id) of a key: how keys are matched."""


def key_id_of_url(url: str) -> KeyId | None:
    """The KeyId a key URL names (vault URI + /keys/ + name, a version after it or not), or None."""
    vault_uri, marker, rest = url.partition("/keys/")
    return (vault_id(vault_uri), name_id(rest.split("/", 1)[0])) if marker else None


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """One version of a key and the attributes that decide whether it can wrap and unwrap."""

    version: str
    created: datetime
    enabled: bool = True
    nbf: datetime | None = None
    exp: datetime | None = None
    key_ops: tuple[str, ...] | None = None
    kty: str | None = None
    key_size: int | None = None

    @property
    def has_required_ops(self) -> bool:
        return self.key_ops is None or _includes_required_ops(self.key_ops)


# Versions list one of a few key_ops tuples, and every prediction asks about each version.
@lru_cache(maxsize=1024)
def _includes_required_ops(key_ops: tuple[str, ...]) -> bool:
    return {op.lower() for op in key_ops} >= REQUIRED_KEY_OPS


@dataclass(frozen=True, slots=True)
class VaultNetwork:
    """Who may reach a vault over the network: `publicNetworkAccess` (Enabled: True), `networkAcls.defaultAction`
    and whether `networkAcls.bypass` includes AzureServices. The defaults are a vault without a firewall."""

    public_network_access: bool = True
    default_action: str = "Allow"
    bypass_azure_services: bool = True
    # Extension to the format: the firewall lets the monitor's own network in (an IP or virtual-network rule, or
    # a private endpoint); the monitor is no trusted service, so without it its reads are refused. No rule.
    allows_monitor: bool = False

    @property
    def lets_service_in(self) -> bool:
        """Rule 1's network half: Service Bus, a trusted Microsoft service, gets through (open to all networks,
        or trusted services let past the firewall)."""
        return self.bypass_azure_services or (
            self.public_network_access and self.default_action.strip().lower() == "allow"
        )


OPEN_NETWORK = VaultNetwork()
# What set_network sets (the last an extension to the format).
NETWORK_SETTINGS = ("public_network_access", "default_action", "bypass_azure_services", "allows_monitor")


@dataclass(frozen=True, slots=True)
class Vault:
    """A Key Vault (or Managed HSM) and the effective key permissions of each principal on it."""

    uri: str
    soft_delete: bool = True
    purge_protection: bool = True
    rbac: bool = False
    access: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Extension to the format: a soft-deleted vault, so a live scan can record one without a change.
    deleted: bool = False
    network: VaultNetwork = OPEN_NETWORK
    # Extension to the format: its ARM resource id, where a live read found it (its diagnostic settings hang off it).
    resource_id: str | None = None

    @property
    def id(self) -> str:
        return vault_id(self.uri)


@dataclass(frozen=True, slots=True)
class Key:
    """A key in a vault, with all its versions."""

    vault: str
    name: str
    versions: tuple[KeyVersion, ...]
    deleted: bool = False
    # Kept as read; its structure matters to rotation (a later concern), not to usability.
    rotation_policy: Mapping[str, object] | None = None
    # Extension to the format: permissions granted on this key alone (RBAC role assignments at key
    # scope), on top of the vault's `access`.
    access: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Extension to the format: the current version's tags (e.g. owner, oncall), which alerts route by.
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def id(self) -> KeyId:
        return (vault_id(self.vault), name_id(self.name))


@dataclass(frozen=True, slots=True)
class KeyRef:
    """One entry of a namespace's `encryption.keyVaultProperties`."""

    vault: str
    name: str
    version: str | None = None
    identity: str | None = None  # user-assigned identity resource id; None = system-assigned

    @property
    def key_id(self) -> KeyId:
        return (vault_id(self.vault), name_id(self.name))

    @property
    def url(self) -> str:
        return key_url(self.vault, self.name)


@dataclass(frozen=True, slots=True)
class NamespaceIdentity:
    """The managed identities a namespace has: system-assigned principal and user-assigned ones."""

    principal_id: str | None = None
    user_assigned: Mapping[str, str | None] = field(default_factory=dict)

    def principal_for(self, identity: str | None) -> str | None:
        """The principal id a key reference acts as, or None when that identity is not on the namespace."""
        if identity is None:
            return name_id(self.principal_id) if self.principal_id else None
        wanted = name_id(identity)
        for resource_id, principal in self.user_assigned.items():
            if name_id(resource_id) == wanted:
                return name_id(principal) if principal else None
        return None


# The Geo-DR roles a disasterRecoveryConfigs entry gives its namespace, as the scenario spells them.
GEO_DR_ROLES = ("primary", "primary_not_replicating", "secondary")
_GEO_DR_SPELLINGS = {role.replace("_", ""): role for role in GEO_DR_ROLES}


def geo_dr_role(text: str) -> str | None:
    """The role a spelling names, the scenario's (primary_not_replicating) or Azure's (PrimaryNotReplicating), in
    any case; None for anything else."""
    return _GEO_DR_SPELLINGS.get(text.strip().lower().replace("_", ""))


@dataclass(frozen=True, slots=True)
class GeoPairing:
    """The namespace's Geo-Disaster Recovery pairing (its `disasterRecoveryConfigs` entry).

    At failover the partner (the secondary) takes over the alias and goes on with the keys the primary
    lists, through its own identities: the system-assigned one of the partner, or the same user-assigned
    identity, which must be on the partner too."""

    alias: str
    partner: str  # the partner namespace's ARM id
    role: str = "primary"  # one of GEO_DR_ROLES
    # The partner's managed identities as read; None when the monitor could not read the partner.
    partner_identity: NamespaceIdentity | None = None
    # Why the partner could not be read (with partner_identity None).
    partner_blind: str | None = None

    @property
    def is_primary(self) -> bool:
        return self.role != "secondary"

    @property
    def partner_name(self) -> str:
        return self.partner.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class KeyAccess:
    """One call the service made on a listed key through the namespace's identity, as Key Vault's audit log
    (`AuditEvent`) records it: its polls are these calls, every 300 s at the namespace's own phase."""

    at: datetime
    key: str  # the key's URL without a version: vault URI + /keys/ + name
    operation: str  # as the log names it: KeyGet, KeyWrap, KeyUnwrap
    status: int  # the HTTP status Key Vault answered the service
    version: str | None = None

    @property
    def succeeded(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class Observation:
    """What the audit logs showed of a namespace's own key accesses since `since` (extension to the format).

    `phase`: seconds into each 300 s cycle at which its polls land, when given rather than learnt from
    `accesses` (a scenario may state it). `unobserved`: why nothing could be observed (no diagnostic setting
    sends the vault's AuditEvent logs to a workspace the monitor reads, a failed query): the observation is
    then unknown, never a verdict; `diagnostics_missing` says it was the former."""

    accesses: tuple[KeyAccess, ...] = ()
    since: datetime | None = None
    phase: float | None = None
    unobserved: str | None = None
    diagnostics_missing: bool = False


class NamespaceKind(enum.Enum):
    """Which service a namespace belongs to: both encrypt with the same customer-managed-key model (up to three
    keyVaultProperties, system- or user-assigned identity, the service polling its keys)."""

    SERVICE_BUS = "servicebus"
    EVENT_HUBS = "eventhubs"

    @property
    def service(self) -> str:
        """The service's name, for people."""
        return "Service Bus" if self is NamespaceKind.SERVICE_BUS else "Event Hubs"

    @property
    def provider(self) -> str:
        """The ARM resource provider of its namespaces."""
        return "Microsoft.ServiceBus" if self is NamespaceKind.SERVICE_BUS else "Microsoft.EventHub"

    @property
    def cli(self) -> str:
        """The `az` command group of its namespaces."""
        return "servicebus" if self is NamespaceKind.SERVICE_BUS else "eventhubs"


@lru_cache(maxsize=_FOLDED)
def kind_of(resource_id: str) -> NamespaceKind:
    """The kind of namespace an ARM id names: Event Hubs for Microsoft.EventHub, else Service Bus."""
    return (
        NamespaceKind.EVENT_HUBS
        if "/providers/microsoft.eventhub/" in resource_id.lower()
        else NamespaceKind.SERVICE_BUS
    )


@dataclass(frozen=True, slots=True)
class Namespace:
    """A Service Bus (Premium) or Event Hubs (Premium or Dedicated) namespace encrypted with customer-managed
    keys; its kind is its id's resource provider."""

    id: str
    name: str
    keys: tuple[KeyRef, ...]
    identity: NamespaceIdentity = field(default_factory=NamespaceIdentity)
    tags: Mapping[str, str] = field(default_factory=dict)
    # Extension to the format: `encryption.requireInfrastructureEncryption` (double encryption at rest).
    infrastructure_encryption: bool = False
    # Extension to the format: the Geo-DR pairing, when the namespace has one.
    geo_dr: GeoPairing | None = None
    # Extension to the format: the service's own key accesses, from Key Vault's audit logs.
    observed: Observation | None = None

    @property
    def resource_group(self) -> str | None:
        return resource_group_of(self.id)

    @property
    def kind(self) -> NamespaceKind:
        return kind_of(self.id)


def subscription_of(resource_id: str) -> str:
    """The subscription an ARM id names, as spelt there ("" when it names none)."""
    parts = resource_id.strip("/").split("/")
    return parts[1] if len(parts) > 1 and parts[0].lower() == "subscriptions" else ""


def resource_group_of(resource_id: str) -> str | None:
    """The resource group an ARM id names, or None."""
    parts = resource_id.strip("/").split("/")
    lowered = [p.lower() for p in parts]
    if "resourcegroups" in lowered:
        index = lowered.index("resourcegroups") + 1
        if index < len(parts):
            return parts[index]
    return None


class BlindScope(enum.Enum):
    """What kind of thing the monitor could not read."""

    SUBSCRIPTION = "subscription"  # its namespaces could not be listed
    VAULT = "vault"  # the vault's properties and access could not be read
    KEY = "key"  # the key could not be read
    NAMESPACE = "namespace"  # the namespace itself (which keys it lists) could not be read: every reference unknown


@dataclass(frozen=True, slots=True)
class BlindSpot:
    """Something the monitor could not read, and why: whatever depends on it is unknown, never healthy or revoked."""

    scope: BlindScope
    target: str  # subscription id, vault URI, key URL (vault URI + /keys/ + name), or namespace ARM id
    reason: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What exists at one moment: vaults, keys and CMK namespaces, and what could not be read."""

    vaults: tuple[Vault, ...] = ()
    keys: tuple[Key, ...] = ()
    namespaces: tuple[Namespace, ...] = ()
    blind: tuple[BlindSpot, ...] = ()


class Keep(enum.Enum):
    """Marks an `update_version` field the change leaves as it is."""

    KEEP = "keep"


KEEP = Keep.KEEP


@dataclass(frozen=True, slots=True)
class NewVersion:
    """A rotation: `version` becomes the key's newest version (creating the key if it does not exist)."""

    op: ClassVar[str] = "new_version"
    at: datetime
    vault: str
    key: str
    version: KeyVersion


@dataclass(frozen=True, slots=True)
class UpdateVersion:
    """Sets attributes of one version; `version` None means the key's current version at `at`."""

    op: ClassVar[str] = "update_version"
    at: datetime
    vault: str
    key: str
    version: str | None = None
    enabled: bool | Keep = KEEP
    nbf: datetime | Keep | None = KEEP
    exp: datetime | Keep | None = KEEP
    key_ops: tuple[str, ...] | Keep | None = KEEP


@dataclass(frozen=True, slots=True)
class DeleteKey:
    """The key is soft-deleted (recoverable)."""

    op: ClassVar[str] = "delete_key"
    at: datetime
    vault: str
    key: str


@dataclass(frozen=True, slots=True)
class RecoverKey:
    """A soft-deleted key is recovered."""

    op: ClassVar[str] = "recover_key"
    at: datetime
    vault: str
    key: str


@dataclass(frozen=True, slots=True)
class PurgeKey:
    """The key no longer exists."""

    op: ClassVar[str] = "purge_key"
    at: datetime
    vault: str
    key: str


@dataclass(frozen=True, slots=True)
class SetAccess:
    """Sets `principal`'s effective key permissions on `vault` (an empty set removes access)."""

    op: ClassVar[str] = "set_access"
    at: datetime
    vault: str
    principal: str
    permissions: frozenset[str]


@dataclass(frozen=True, slots=True)
class DeleteVault:
    """The vault disappears."""

    op: ClassVar[str] = "delete_vault"
    at: datetime
    vault: str


@dataclass(frozen=True, slots=True)
class RecoverVault:
    """The vault comes back."""

    op: ClassVar[str] = "recover_vault"
    at: datetime
    vault: str


@dataclass(frozen=True, slots=True)
class SetNetwork:
    """Sets any of the vault's network settings (see VaultNetwork); the others are kept."""

    op: ClassVar[str] = "set_network"
    at: datetime
    vault: str
    public_network_access: bool | Keep = KEEP
    default_action: str | Keep = KEEP
    bypass_azure_services: bool | Keep = KEEP
    allows_monitor: bool | Keep = KEEP


Change = (
    NewVersion | UpdateVersion | DeleteKey | RecoverKey | PurgeKey | SetAccess | DeleteVault | RecoverVault | SetNetwork
)
KEY_CHANGES = (NewVersion, UpdateVersion, DeleteKey, RecoverKey, PurgeKey)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A snapshot at `now`, how far ahead to look, and changes planned (or past) on a timeline."""

    now: datetime
    snapshot: Snapshot
    horizon: datetime | None = None  # None: one year after `now`
    changes: tuple[Change, ...] = ()

    @property
    def effective_horizon(self) -> datetime:
        return self.horizon if self.horizon is not None else default_horizon(self.now)


def default_horizon(now: datetime) -> datetime:
    """One year after `now` (365 days; 366 across a 29 February)."""
    try:
        return now.replace(year=now.year + 1)
    except ValueError:  # 29 February
        return now + timedelta(days=366)

"""Vault properties and effective key permissions from ARM (azure-mgmt-keyvault, azure-mgmt-authorization),
and for a Managed HSM from its own local RBAC (azure-keyvault-administration).

Access-policy vaults: each policy's key permissions. RBAC vaults: role assignments at, above and below
the vault, each role definition's data actions turned into the permissions Service Bus needs. Managed
HSMs: the HSM's local role assignments at `/`, `/keys` and `/keys/<name>`, read from its data plane
(ARM's role assignments do not reach an HSM's keys).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError
from azure.mgmt.keyvault.models import ManagedHsm
from azure.mgmt.keyvault.models import Vault as ArmVault

from monitor.adapters.azure_clients import AzureClients, describe_failure
from monitor.app.ports import VaultReading
from monitor.domain.model import (
    Vault,
    VaultNetwork,
    is_managed_hsm,
    name_id,
    subscription_of,
    vault_id,
    vault_short_name,
)

# Key Vault data actions behind each permission Service Bus needs.
DATA_ACTIONS = {
    "get": "microsoft.keyvault/vaults/keys/read",
    "wrapkey": "microsoft.keyvault/vaults/keys/wrap/action",
    "unwrapkey": "microsoft.keyvault/vaults/keys/unwrap/action",
}
# The same for a Managed HSM's local RBAC (its data actions read keys with an action, not a read).
HSM_DATA_ACTIONS = {
    "get": "microsoft.keyvault/managedhsm/keys/read/action",
    "wrapkey": "microsoft.keyvault/managedhsm/keys/wrap/action",
    "unwrapkey": "microsoft.keyvault/managedhsm/keys/unwrap/action",
}
# The role the monitor needs on an HSM to read key attributes and the local role assignments.
HSM_READER_ROLE = "Managed HSM Crypto Auditor"


def permissions_from_data_actions(
    data_actions: Iterable[str], not_data_actions: Iterable[str], *, actions: Mapping[str, str] = DATA_ACTIONS
) -> frozenset[str]:
    """The Service Bus-relevant key permissions a role's data actions grant (wildcards honoured)."""
    allowed = [str(getattr(a, "value", a)).lower() for a in data_actions]
    denied = [str(getattr(a, "value", a)).lower() for a in not_data_actions]
    return frozenset(
        permission
        for permission, action in actions.items()
        if any(fnmatchcase(action, pattern) for pattern in allowed)
        and not any(fnmatchcase(action, pattern) for pattern in denied)
    )


class VaultAccess:
    """AccessReader over ARM: finds each vault in the scanned subscriptions, then reads who may use its keys."""

    def __init__(self, clients: AzureClients) -> None:
        self._clients = clients
        self._role_permissions: dict[str, frozenset[str]] = {}

    async def read_vaults(self, vault_uris: Sequence[str], *, subscriptions: Sequence[str]) -> VaultReading:
        """What ARM says about each of `vault_uris`; a vault it cannot read lands in `blind` with the reason."""
        wanted = {vault_id(uri): uri for uri in vault_uris}
        reading = VaultReading()
        listing_failures: list[str] = []
        active: dict[str, ArmVault | ManagedHsm] = {}
        deleted_names: set[str] = set()
        # HSMs are listed only where a namespace uses one: most fleets have none, and a poll pays for every list.
        with_hsms = any(is_managed_hsm(uri) for uri in vault_uris)
        results = await asyncio.gather(
            *(self._list(sub, hsms=with_hsms) for sub in subscriptions), return_exceptions=True
        )
        for subscription, result in zip(subscriptions, results, strict=True):
            if isinstance(result, BaseException):
                listing_failures.append(f"subscription {subscription}: {describe_failure(result)}")
                continue
            vaults, hsms, deleted = result
            for vault in vaults:
                uri = vault.properties.vault_uri if vault.properties else None
                if uri:
                    active[vault_id(uri)] = vault
            for hsm in hsms:
                uri = hsm.properties.hsm_uri if hsm.properties else None
                if uri:
                    active[vault_id(uri)] = hsm
            deleted_names.update(deleted)
        found = [(key, active[key]) for key in wanted if key in active]
        outcomes = await asyncio.gather(
            *(self._hsm(v) if isinstance(v, ManagedHsm) else self._vault(v) for _, v in found),
            return_exceptions=True,
        )
        for (key, _), outcome in zip(found, outcomes, strict=True):
            if isinstance(outcome, HsmAccessError):
                reading.blind[key] = f"access to Managed HSM {wanted[key]} could not be read: {outcome.reason}"
                continue
            if isinstance(outcome, BaseException):
                what = "Managed HSM" if is_managed_hsm(wanted[key]) else "vault"
                reading.blind[key] = f"access to {what} {wanted[key]} could not be read: {describe_failure(outcome)}"
                continue
            found_vault, key_access = outcome
            reading.found[key] = found_vault
            if key_access:
                reading.key_access[key] = key_access
        for key, uri in wanted.items():
            if key in reading.found or key in reading.blind:
                continue
            if vault_short_name(uri).lower() in deleted_names:
                reading.found[key] = Vault(uri=uri, deleted=True)
                continue
            where = ", ".join(subscriptions) or "no subscription"
            what = "Managed HSM" if is_managed_hsm(uri) else "vault"
            reason = f"{what} {uri} is not visible in {where}: give the monitor Reader on the {what}'s subscription"
            if listing_failures:
                reason += f" (listing failed for {'; '.join(listing_failures)})"
            reading.blind[key] = reason
        return reading

    async def _list(self, subscription: str, *, hsms: bool) -> tuple[list[ArmVault], list[ManagedHsm], set[str]]:
        client = self._clients.keyvault_mgmt(subscription)
        vaults = [vault async for vault in client.vaults.list_by_subscription()]
        try:
            deleted = {(d.name or "").lower() async for d in client.vaults.list_deleted()}
        except AzureError:
            deleted = set()  # without it a deleted vault stays unknown, which is the safe side
        managed: list[ManagedHsm] = []
        if hsms:
            managed = [hsm async for hsm in client.managed_hsms.list_by_subscription()]
            # As for vaults: without the deleted list a deleted HSM stays unknown.
            with contextlib.suppress(AzureError):
                # The published example's `name` is not the HSM's: its resource id (mhsmId) names it.
                deleted |= {
                    (d.properties.mhsm_id if d.properties and d.properties.mhsm_id else d.id or "")
                    .rstrip("/")
                    .rsplit("/", 1)[-1]
                    .lower()
                    async for d in client.managed_hsms.list_deleted()
                }
        return vaults, managed, deleted

    async def _vault(self, vault: ArmVault) -> tuple[Vault, dict[str, dict[str, frozenset[str]]]]:
        properties = vault.properties
        assert properties is not None and properties.vault_uri is not None  # noqa: S101 - narrows the type; holds by construction
        rbac = bool(properties.enable_rbac_authorization)
        key_access: dict[str, dict[str, frozenset[str]]] = {}
        if rbac:
            access, key_access = await self._role_access(vault.id or "")
        else:
            access = {}
            for policy in properties.access_policies or []:
                if policy.application_id:  # a compound identity never matches a managed identity alone
                    continue
                keys = policy.permissions.keys_property if policy.permissions else None
                granted = frozenset(str(getattr(p, "value", p)).lower() for p in keys or [])
                principal = name_id(policy.object_id)
                access[principal] = access.get(principal, frozenset()) | granted
        result = Vault(
            uri=properties.vault_uri,
            # Soft delete is on for every vault today; ARM may still omit the flag.
            soft_delete=properties.enable_soft_delete is not False,
            purge_protection=bool(properties.enable_purge_protection),
            rbac=rbac,
            access=access,
            network=vault_network(properties.public_network_access, properties.network_acls),
            resource_id=vault.id,
        )
        return result, key_access

    async def _hsm(self, hsm: ManagedHsm) -> tuple[Vault, dict[str, dict[str, frozenset[str]]]]:
        properties = hsm.properties
        assert properties is not None and properties.hsm_uri is not None  # noqa: S101 - narrows the type; holds by construction
        access, key_access = await self._hsm_role_access(properties.hsm_uri)
        result = Vault(
            uri=properties.hsm_uri,
            # An HSM's soft delete cannot be turned off; ARM may still omit the flag.
            soft_delete=properties.enable_soft_delete is not False,
            purge_protection=bool(properties.enable_purge_protection),
            rbac=True,  # an HSM has no access policies: its local RBAC is the only access model
            access=access,
            network=vault_network(properties.public_network_access, properties.network_acls),
            resource_id=hsm.id,
        )
        return result, key_access

    async def _hsm_role_access(
        self, hsm_uri: str
    ) -> tuple[dict[str, frozenset[str]], dict[str, dict[str, frozenset[str]]]]:
        """Permissions per principal at `/` or `/keys` (every key), and per key (`/keys/<name>`), from the HSM's
        local role assignments. Listing at `/` returns the assignments at every scope of the HSM."""
        client = self._clients.access_control(hsm_uri)
        try:
            definitions = {
                _last_segment(definition.id or definition.name or ""): definition
                async for definition in client.list_role_definitions("/")
            }
            assignments = [assignment async for assignment in client.list_role_assignments("/")]
        except HttpResponseError as error:
            if error.status_code in (401, 403):
                needed = f"give the monitor {HSM_READER_ROLE} at scope /"
                raise HsmAccessError(f"{describe_failure(error)}; {needed}") from None
            raise
        hsm_level: dict[str, frozenset[str]] = {}
        key_level: dict[str, dict[str, frozenset[str]]] = {}
        for assignment in assignments:
            properties = assignment.properties
            if properties is None:
                continue
            role = _last_segment(properties.role_definition_id or "")
            definition = definitions.get(role)
            if definition is None:
                # Guessing "no permissions" would call a key unusable on what was not seen.
                raise HsmAccessError(
                    f"role assignment {assignment.name} names role definition {role!r}, which is not listed"
                )
            granted: frozenset[str] = frozenset()
            for permission in definition.permissions or []:
                granted |= permissions_from_data_actions(
                    permission.data_actions or [], permission.not_data_actions or [], actions=HSM_DATA_ACTIONS
                )
            principal = name_id(properties.principal_id or "")
            if not granted or not principal:
                continue
            scope = str(getattr(properties.scope, "value", properties.scope) or "")
            parts = [part for part in scope.split("/") if part]
            if not parts or parts == ["keys"]:
                hsm_level[principal] = hsm_level.get(principal, frozenset()) | granted
            elif len(parts) >= 2 and parts[0].lower() == "keys":
                per_key = key_level.setdefault(name_id(parts[1]), {})
                per_key[principal] = per_key.get(principal, frozenset()) | granted
        return hsm_level, key_level

    async def _role_access(
        self, vault_resource_id: str
    ) -> tuple[dict[str, frozenset[str]], dict[str, dict[str, frozenset[str]]]]:
        """Permissions per principal at the vault (or above) and per key (assignments at key scope)."""
        subscription = subscription_of(vault_resource_id)
        client = self._clients.authorization(subscription)
        vault_scope = vault_resource_id.rstrip("/").lower()
        vault_level: dict[str, frozenset[str]] = {}
        key_level: dict[str, dict[str, frozenset[str]]] = {}
        async for assignment in client.role_assignments.list_for_scope(vault_resource_id):
            scope = (assignment.scope or "").rstrip("/").lower()
            principal = name_id(assignment.principal_id or "")
            granted = await self._permissions_of(client, assignment.role_definition_id or "")
            if not granted or not principal:
                continue
            if vault_scope == scope or vault_scope.startswith(scope + "/") or scope == "/":
                vault_level[principal] = vault_level.get(principal, frozenset()) | granted
            elif scope.startswith(vault_scope + "/keys/"):
                key = scope[len(vault_scope) + len("/keys/") :].split("/", 1)[0]
                per_key = key_level.setdefault(key, {})
                per_key[principal] = per_key.get(principal, frozenset()) | granted
        return vault_level, key_level

    async def _permissions_of(self, client: object, role_definition_id: str) -> frozenset[str]:
        cached = self._role_permissions.get(role_definition_id.lower())
        if cached is None:
            definition = await client.role_definitions.get_by_id(role_definition_id)  # type: ignore[attr-defined]
            granted: frozenset[str] = frozenset()
            for permission in definition.permissions or []:
                granted |= permissions_from_data_actions(
                    permission.data_actions or [], permission.not_data_actions or []
                )
            self._role_permissions[role_definition_id.lower()] = cached = granted
        return cached


class HsmAccessError(Exception):
    """An HSM's local RBAC that could not be read or used, with what the monitor needs; the HSM becomes blind."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _last_segment(resource_id: str) -> str:
    return resource_id.rstrip("/").rsplit("/", 1)[-1].lower()


def vault_network(public_network_access: object, acls: Any) -> VaultNetwork:
    """A vault's (or Managed HSM's) `publicNetworkAccess` and `networkAcls` as rule 1 reads them. Azure leaves
    out what is at its default: no `networkAcls` is a vault open to all networks, no `bypass` lets trusted
    services through, no `publicNetworkAccess` is Enabled."""
    public = str(getattr(public_network_access, "value", public_network_access) or "Enabled")
    if acls is None:
        return VaultNetwork(public_network_access=public.strip().lower() != "disabled")
    action = str(getattr(acls.default_action, "value", acls.default_action) or "Allow")
    bypass = str(getattr(acls.bypass, "value", acls.bypass) or "AzureServices")
    return VaultNetwork(
        public_network_access=public.strip().lower() != "disabled",
        default_action=action,
        # A list of services (AzureServices, Logging, Metrics) or None.
        bypass_azure_services="azureservices" in {part.strip().lower() for part in bypass.split(",")},
    )

"""Vault properties and effective key permissions from ARM (azure-mgmt-keyvault, azure-mgmt-authorization).

Access-policy vaults: each policy's key permissions. RBAC vaults: role assignments at, above and below
the vault, each role definition's data actions turned into the permissions Service Bus needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from azure.core.exceptions import AzureError
from azure.mgmt.keyvault.models import NetworkRuleSet
from azure.mgmt.keyvault.models import Vault as ArmVault

from monitor.adapters.azure_clients import AzureClients, describe_failure
from monitor.app.ports import VaultReading
from monitor.domain.model import Vault, VaultNetwork, name_id, subscription_of, vault_id, vault_short_name

# Key Vault data actions behind each permission Service Bus needs.
DATA_ACTIONS = {
    "get": "microsoft.keyvault/vaults/keys/read",
    "wrapkey": "microsoft.keyvault/vaults/keys/wrap/action",
    "unwrapkey": "microsoft.keyvault/vaults/keys/unwrap/action",
}


def permissions_from_data_actions(data_actions: Iterable[str], not_data_actions: Iterable[str]) -> frozenset[str]:
    """The Service Bus-relevant key permissions a role's data actions grant (wildcards honoured)."""
    allowed = [a.lower() for a in data_actions]
    denied = [a.lower() for a in not_data_actions]
    return frozenset(
        permission
        for permission, action in DATA_ACTIONS.items()
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
        active: dict[str, ArmVault] = {}
        deleted_names: set[str] = set()
        results = await asyncio.gather(*(self._list(sub) for sub in subscriptions), return_exceptions=True)
        for subscription, result in zip(subscriptions, results, strict=True):
            if isinstance(result, BaseException):
                listing_failures.append(f"subscription {subscription}: {describe_failure(result)}")
                continue
            vaults, deleted = result
            for vault in vaults:
                uri = vault.properties.vault_uri if vault.properties else None
                if uri:
                    active[vault_id(uri)] = vault
            deleted_names.update(deleted)
        found = [(key, active[key]) for key in wanted if key in active]
        outcomes = await asyncio.gather(*(self._vault(vault) for _, vault in found), return_exceptions=True)
        for (key, _), outcome in zip(found, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                reading.blind[key] = f"access to vault {wanted[key]} could not be read: {describe_failure(outcome)}"
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
            reason = f"vault {uri} is not visible in {where}: give the monitor Reader on the vault's subscription"
            if listing_failures:
                reason += f" (listing failed for {'; '.join(listing_failures)})"
            reading.blind[key] = reason
        return reading

    async def _list(self, subscription: str) -> tuple[list[ArmVault], set[str]]:
        client = self._clients.keyvault_mgmt(subscription)
        vaults = [vault async for vault in client.vaults.list_by_subscription()]
        try:
            deleted = {(d.name or "").lower() async for d in client.vaults.list_deleted()}
        except AzureError:
            deleted = set()  # without it a deleted vault stays unknown, which is the safe side
        return vaults, deleted

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
        )
        return result, key_access

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


def vault_network(public_network_access: object, acls: NetworkRuleSet | None) -> VaultNetwork:
    """A vault's `publicNetworkAccess` and `networkAcls` as rule 1 reads them. Azure leaves out what is at its
    default: no `networkAcls` is a vault open to all networks, no `bypass` lets trusted services through, no
    `publicNetworkAccess` is Enabled."""
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

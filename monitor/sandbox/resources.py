"""JSON documents of ARM resources (Service Bus namespaces, Key Vault vaults) shaped as the published examples."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from monitor.domain.model import (
    OPEN_NETWORK,
    GeoPairing,
    Namespace,
    NamespaceIdentity,
    NamespaceKind,
    VaultNetwork,
    kind_of,
)
from monitor.sandbox.wire import arm_time

NAMESPACE_TYPE = "Microsoft.ServiceBus/Namespaces"
EVENT_HUBS_NAMESPACE_TYPE = "Microsoft.EventHub/Namespaces"  # as EHNameSpaceCreate.json writes it
# The scenario's Geo-DR roles as ARM spells them (RoleDisasterRecovery).
ARM_ROLES = {"primary": "Primary", "primary_not_replicating": "PrimaryNotReplicating", "secondary": "Secondary"}
VAULT_TYPE = "Microsoft.KeyVault/vaults"
MANAGED_HSM_TYPE = "Microsoft.KeyVault/managedHSMs"
MONITOR_ADDRESS = "198.51.100.7/32"
SOFT_DELETE_RETENTION_DAYS = 90
# Service Bus answers with the region's display name, Key Vault with its short name.
NAMESPACE_LOCATION = "West Europe"
VAULT_LOCATION = "westeurope"
# Stable ids derived from names, so the same scenario always yields the same documents.
_IDS = uuid.UUID("6f0b8c1e-2d7a-4e55-9a43-5b1f0e6c7d21")

# Key Vault's spelling of key permissions in access policies, in the order getVault.json lists them.
KEY_PERMISSIONS = (
    "encrypt",
    "decrypt",
    "wrapKey",
    "unwrapKey",
    "sign",
    "verify",
    "get",
    "list",
    "create",
    "update",
    "import",
    "delete",
    "backup",
    "restore",
    "recover",
    "purge",
    "release",
    "rotate",
    "getrotationpolicy",
    "setrotationpolicy",
    "all",
)
_SPELLING = {permission.lower(): permission for permission in KEY_PERMISSIONS}


def stable_uuid(*parts: str) -> str:
    """A UUID that depends only on `parts` (case-insensitively)."""
    return str(uuid.uuid5(_IDS, "|".join(part.lower() for part in parts)))


def spell_permissions(permissions: Iterable[str]) -> list[str]:
    """Permissions as Key Vault spells them, in its order; unknown ones after, as given."""
    lowered = {p.lower() for p in permissions}
    known = [p for p in KEY_PERMISSIONS if p.lower() in lowered]
    return known + sorted(p for p in lowered if p not in _SPELLING)


def subscription_of(resource_id: str) -> str | None:
    """The subscription id in an ARM resource id, or None."""
    parts = resource_id.strip("/").split("/")
    for index, part in enumerate(parts[:-1]):
        if part.lower() == "subscriptions":
            return parts[index + 1]
    return None


def resource_group_of(resource_id: str) -> str | None:
    """The resource group in an ARM resource id, or None."""
    parts = resource_id.strip("/").split("/")
    for index, part in enumerate(parts[:-1]):
        if part.lower() == "resourcegroups":
            return parts[index + 1]
    return None


def namespace_identity(namespace: Namespace, tenant_id: str) -> dict[str, Any]:
    """The namespace's `identity` block: system- and user-assigned identities as ARM shows them."""
    return identity_document(namespace.identity, tenant_id)


def identity_document(identity: NamespaceIdentity, tenant_id: str) -> dict[str, Any]:
    """An `identity` block as ARM shows a namespace's."""
    system = identity.principal_id
    user = identity.user_assigned
    kinds = [kind for kind, present in (("SystemAssigned", system), ("UserAssigned", user)) if present]
    document: dict[str, Any] = {}
    if system:
        document["principalId"] = system
        document["tenantId"] = tenant_id
    document["type"] = ", ".join(kinds) or "None"
    if user:
        document["userAssignedIdentities"] = {
            resource_id: {"clientId": stable_uuid("client", resource_id), "principalId": principal}
            for resource_id, principal in user.items()
        }
    return document


def namespace_document(
    namespace: Namespace, *, tenant_id: str, created: datetime, location: str = NAMESPACE_LOCATION
) -> dict[str, Any]:
    """A Premium namespace encrypted with the scenario's keys, shaped as EHNameSpaceCreate.json's response."""
    key_vault_properties = []
    for ref in namespace.keys:
        entry: dict[str, Any] = {"keyName": ref.name, "keyVaultUri": ref.vault, "keyVersion": ref.version or ""}
        if ref.identity:  # omitted for the system-assigned identity, as Azure omits it
            entry["identity"] = {"userAssignedIdentity": ref.identity}
        key_vault_properties.append(entry)
    encryption = {
        "keySource": "Microsoft.KeyVault",
        "keyVaultProperties": key_vault_properties,
        "requireInfrastructureEncryption": namespace.infrastructure_encryption,
    }
    return premium_namespace(
        namespace.id,
        namespace.name,
        identity=namespace_identity(namespace, tenant_id),
        created=created,
        location=location,
        tags=namespace.tags,
        encryption=encryption,
    )


def premium_namespace(
    resource_id: str,
    name: str,
    *,
    identity: dict[str, Any],
    created: datetime,
    location: str = NAMESPACE_LOCATION,
    tags: Mapping[str, str] | None = None,
    encryption: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Premium namespace as ARM returns it (`encryption` among its properties when given)."""
    properties: dict[str, Any] = {
        "minimumTlsVersion": "1.2",
        "publicNetworkAccess": "Enabled",
        "disableLocalAuth": False,
        "zoneRedundant": False,
    }
    if kind_of(resource_id) is NamespaceKind.EVENT_HUBS:  # as EHNameSpaceCreate.json's response has them
        properties.update({"isAutoInflateEnabled": False, "maximumThroughputUnits": 0, "kafkaEnabled": True})
    else:
        properties["premiumMessagingPartitions"] = 1
    if encryption is not None:
        properties["encryption"] = encryption
    properties.update(
        {
            "provisioningState": "Succeeded",
            "status": "Active",
            "metricId": f"{subscription_of(resource_id) or ''}:{name.lower()}",
            "createdAt": arm_time(created),
            "updatedAt": arm_time(created),
            "serviceBusEndpoint": f"https://{name}.servicebus.windows.net:443/",
        }
    )
    return {
        "sku": {"name": "Premium", "tier": "Premium", "capacity": 1},
        "id": resource_id,
        "name": name,
        "type": EVENT_HUBS_NAMESPACE_TYPE if kind_of(resource_id) is NamespaceKind.EVENT_HUBS else NAMESPACE_TYPE,
        "location": location,
        "tags": dict(tags or {}),
        "identity": identity,
        "properties": properties,
    }


def _network_acls(network: VaultNetwork) -> dict[str, Any]:
    """`networkAcls` as ARM shows a vault's or an HSM's firewall."""
    return {
        "bypass": "AzureServices" if network.bypass_azure_services else "None",
        "defaultAction": "Deny" if network.default_action.strip().lower() == "deny" else "Allow",
        # The monitor's own address, where the scenario lets it in (a documentation address: RFC 5737).
        "ipRules": [{"value": MONITOR_ADDRESS}] if network.allows_monitor else [],
        "virtualNetworkRules": [],
    }


def _system_data(created: datetime) -> dict[str, str]:
    """`systemData` of a resource the stand-in made `created` and has not changed since."""
    return {
        "createdBy": "keyhealth-sandbox",
        "createdByType": "Application",
        "createdAt": arm_time(created),
        "lastModifiedBy": "keyhealth-sandbox",
        "lastModifiedByType": "Application",
        "lastModifiedAt": arm_time(created),
    }


def vault_document(
    *,
    resource_id: str,
    name: str,
    host: str,
    tenant_id: str,
    soft_delete: bool,
    purge_protection: bool,
    rbac: bool,
    access: Mapping[str, frozenset[str]],
    premium: bool,
    created: datetime,
    location: str = VAULT_LOCATION,
    network: VaultNetwork = OPEN_NETWORK,
) -> dict[str, Any]:
    """A vault shaped as getVault.json, with the soft-delete, purge-protection and RBAC flags Azure adds."""
    policies = []
    if not rbac:  # an RBAC vault ignores access policies, and the scenario's access became role assignments
        for principal, permissions in access.items():
            if permissions:  # set_access with [] removes the principal
                policies.append(
                    {
                        "tenantId": tenant_id,
                        "objectId": principal,
                        "permissions": {"keys": spell_permissions(permissions), "secrets": [], "certificates": []},
                    }
                )
    properties: dict[str, Any] = {
        "sku": {"family": "A", "name": "premium" if premium else "standard"},
        "tenantId": tenant_id,
        "accessPolicies": policies,
        "enabledForDeployment": False,
        "enabledForDiskEncryption": False,
        "enabledForTemplateDeployment": False,
        "enableSoftDelete": soft_delete,
        "softDeleteRetentionInDays": SOFT_DELETE_RETENTION_DAYS,
        "enableRbacAuthorization": rbac,
    }
    if purge_protection:  # Azure omits the flag rather than writing false
        properties["enablePurgeProtection"] = True
    if network != OPEN_NETWORK:  # Azure writes networkAcls once a firewall was ever set
        properties["networkAcls"] = _network_acls(network)
    properties.update(
        {
            "vaultUri": f"https://{host}/",
            "provisioningState": "Succeeded",
            "publicNetworkAccess": "Enabled" if network.public_network_access else "Disabled",
        }
    )
    return {
        "id": resource_id,
        "name": name,
        "type": VAULT_TYPE,
        "location": location,
        "tags": {},
        "systemData": _system_data(created),
        "properties": properties,
    }


def managed_hsm_document(
    *,
    resource_id: str,
    name: str,
    host: str,
    tenant_id: str,
    purge_protection: bool,
    created: datetime,
    location: str = VAULT_LOCATION,
    network: VaultNetwork = OPEN_NETWORK,
) -> dict[str, Any]:
    """A Managed HSM shaped as ManagedHsm_ListBySubscription.json. Its access is its local RBAC, on its data
    plane; soft delete cannot be turned off on an HSM."""
    properties: dict[str, Any] = {
        "tenantId": tenant_id,
        "initialAdminObjectIds": [stable_uuid("hsm-admin", resource_id)],
        "enableSoftDelete": True,
        "softDeleteRetentionInDays": SOFT_DELETE_RETENTION_DAYS,
        "enablePurgeProtection": purge_protection,
        "hsmUri": f"https://{host}/",
        "provisioningState": "Succeeded",
        "statusMessage": "ManagedHsm is functional.",
        "publicNetworkAccess": "Enabled" if network.public_network_access else "Disabled",
        "networkAcls": _network_acls(network),
    }
    return {
        "id": resource_id,
        "name": name,
        "type": MANAGED_HSM_TYPE,
        "location": location,
        "sku": {"family": "B", "name": "Standard_B1"},
        "tags": {},
        "systemData": _system_data(created),
        "properties": properties,
    }


def partner_document(pairing: GeoPairing, *, tenant_id: str, created: datetime) -> dict[str, Any]:
    """The Geo-DR partner of a scenario namespace that the scenario does not list itself: a Premium namespace
    whose encryption the primary's replication governs, with the identities the pairing gives it."""
    identity = identity_document(pairing.partner_identity or NamespaceIdentity(), tenant_id)
    return premium_namespace(
        pairing.partner, pairing.partner_name, identity=identity, created=created, location="North Europe"
    )


def disaster_recovery_document(namespace_id: str, alias: str, partner: str, role: str) -> dict[str, Any]:
    """One `disasterRecoveryConfigs` entry of a namespace, shaped as SBAliasList.json's (partnerNamespace an
    ARM id, as the schema says, where that example gives a bare name)."""
    return {
        "id": f"{namespace_id}/disasterRecoveryConfigs/{alias}",
        "name": alias,
        "type": f"{kind_of(namespace_id).provider}/Namespaces/disasterrecoveryconfigs",
        "properties": {
            "provisioningState": "Succeeded",
            "pendingReplicationOperationsCount": 0,
            "partnerNamespace": partner,
            "role": ARM_ROLES[role],
        },
    }

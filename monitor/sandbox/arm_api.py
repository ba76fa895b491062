"""Azure Resource Manager at the sandbox's root: subscriptions, Service Bus namespaces, Key Vault vaults, RBAC."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from monitor.sandbox import resource_graph
from monitor.sandbox.rbac import Rbac
from monitor.sandbox.resources import (
    NAMESPACE_TYPE,
    VAULT_LOCATION,
    managed_hsm_document,
    resource_group_of,
    stable_uuid,
    subscription_of,
    vault_document,
)
from monitor.sandbox.state import RESOURCE_AGE, VAULT_RESOURCE_GROUP, SandboxState, VaultInfo
from monitor.sandbox.wire import ApiRequest, ApiResponse, BadSkipTokenError, Router, arm_error, arm_time, page

DEFAULT_PAGE_SIZE = 100
SOFT_DELETE_RETENTION = timedelta(days=90)
_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_RG = r"/resourceGroups/(?P<rg>[^/]+)"
# Service Bus and Event Hubs namespaces: the same routes under each provider (ARM matches providers ignoring case).
_NAMESPACES = r"/providers/(?P<provider>Microsoft\.ServiceBus|Microsoft\.EventHub)/namespaces"
_WRITABLE_NAMESPACES = r"/providers/(?P<provider>Microsoft\.ServiceBus)/namespaces"
_VAULTS = r"/providers/Microsoft\.KeyVault/vaults"
_HSMS = r"/providers/Microsoft\.KeyVault/managedHSMs"
# What a PUT or PATCH may change in a namespace's properties; the rest is the service's to say.
WRITABLE_PROPERTIES = (
    "minimumTlsVersion",
    "publicNetworkAccess",
    "disableLocalAuth",
    "zoneRedundant",
    "premiumMessagingPartitions",
    "alternateName",
    "privateEndpointConnections",
)


def not_found(kind: str, name: str, resource_group: str) -> ApiResponse:
    return arm_error(
        404,
        "ResourceNotFound",
        f"The Resource '{kind}/{name}' under resource group '{resource_group}' was not found. "
        "For more details please go to https://aka.ms/ARMResourceNotFoundFix",
    )


class ArmApi:
    """Routes and handlers for the ARM paths the monitor reads (and the namespace writes it makes)."""

    def __init__(self, state: SandboxState, rbac: Rbac, *, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        self.state = state
        self.rbac = rbac
        self.page_size = page_size
        self._graph_results = resource_graph.ResultSets()
        router = Router(
            lambda request: arm_error(
                404, "InvalidResourceType", f"The sandbox does not serve {request.method} {request.path}."
            )
        )
        router.add("GET", r"/subscriptions/?", self._list_subscriptions)
        router.add("GET", rf"{_SUB}/?", self._get_subscription)
        router.add("GET", rf"{_SUB}{_NAMESPACES}/?", self._list_namespaces)
        router.add("GET", rf"{_SUB}{_RG}{_NAMESPACES}/?", self._list_namespaces)
        router.add("GET", rf"{_SUB}{_RG}{_NAMESPACES}/(?P<name>[^/]+)/?", self._get_namespace)
        router.add("GET", rf"{_SUB}{_RG}{_NAMESPACES}/(?P<name>[^/]+)/disasterRecoveryConfigs/?", self._list_pairings)
        router.add(
            "GET",
            rf"{_SUB}{_RG}{_NAMESPACES}/(?P<name>[^/]+)/disasterRecoveryConfigs/(?P<alias>[^/]+)/?",
            self._get_pairing,
        )
        router.add("PUT", rf"{_SUB}{_RG}{_WRITABLE_NAMESPACES}/(?P<name>[^/]+)/?", self._put_namespace)
        router.add("PATCH", rf"{_SUB}{_RG}{_WRITABLE_NAMESPACES}/(?P<name>[^/]+)/?", self._patch_namespace)
        router.add("GET", rf"{_SUB}{_VAULTS}/?", self._list_vaults)
        router.add("GET", rf"{_SUB}{_RG}{_VAULTS}/?", self._list_vaults)
        router.add("GET", rf"{_SUB}{_RG}{_VAULTS}/(?P<name>[^/]+)/?", self._get_vault)
        router.add("GET", rf"{_SUB}/providers/Microsoft\.KeyVault/deletedVaults/?", self._list_deleted_vaults)
        router.add("GET", rf"{_SUB}{_HSMS}/?", self._list_hsms)
        router.add("GET", rf"{_SUB}{_RG}{_HSMS}/?", self._list_hsms)
        router.add("GET", rf"{_SUB}{_RG}{_HSMS}/(?P<name>[^/]+)/?", self._get_hsm)
        router.add("GET", rf"{_SUB}/providers/Microsoft\.KeyVault/deletedManagedHSMs/?", self._list_deleted_hsms)
        router.add("POST", r"/providers/Microsoft\.ResourceGraph/resources/?", self._resource_graph)
        rbac.add_routes(router)
        self.router = router

    def handle(self, request: ApiRequest) -> ApiResponse:
        """Answer one ARM request."""
        try:
            return self.router.dispatch(request)
        except BadSkipTokenError:
            return arm_error(400, "InvalidSkipToken", "The $skipToken is invalid.")

    def _known_subscription(self, subscription: str) -> bool:
        return subscription.lower() in {s.lower() for s in self.state.subscriptions()}

    @staticmethod
    def _subscription_not_found(subscription: str) -> ApiResponse:
        return arm_error(404, "SubscriptionNotFound", f"The subscription '{subscription}' could not be found.")

    def _paged(self, request: ApiRequest, items: list[dict[str, Any]], size: int | None = None) -> ApiResponse:
        chunk, next_link = page(items, request, size or self.page_size, "$skipToken")
        body: dict[str, Any] = {"value": list(chunk)}
        if next_link:
            body["nextLink"] = next_link
        return ApiResponse(200, body)

    # --- subscriptions --------------------------------------------------------------------------------

    def _subscription_document(self, subscription: str) -> dict[str, Any]:
        return {
            "id": f"/subscriptions/{subscription}",
            "subscriptionId": subscription,
            "displayName": f"keyhealth sandbox {subscription[:8]}",
            "state": "Enabled",
            "tenantId": self.state.tenant_id,
            "authorizationSource": "RoleBased",
        }

    def _list_subscriptions(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        return ApiResponse(200, {"value": [self._subscription_document(s) for s in self.state.subscriptions()]})

    def _get_subscription(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        if not self._known_subscription(match["sub"]):
            return self._subscription_not_found(match["sub"])
        return ApiResponse(200, self._subscription_document(match["sub"]))

    # --- Service Bus namespaces -----------------------------------------------------------------------

    def _list_namespaces(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        subscription, group = match["sub"].lower(), (match.groupdict().get("rg") or "").lower()
        if not self._known_subscription(subscription):
            return self._subscription_not_found(match["sub"])
        provider = match["provider"].lower() + "/"
        items = [
            document
            for document in self.state.namespaces()
            if str(document.get("type", "")).lower().startswith(provider)
            and (subscription_of(str(document.get("id", ""))) or "").lower() == subscription
            and (not group or (resource_group_of(str(document.get("id", ""))) or "").lower() == group)
        ]
        return self._paged(request, items)

    @staticmethod
    def _namespace_id(match: re.Match[str]) -> str:
        return (
            f"/subscriptions/{match['sub']}/resourceGroups/{match['rg']}"
            f"/providers/{match['provider']}/namespaces/{match['name']}"
        )

    def _get_namespace(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        document = self.state.namespace(self._namespace_id(match))
        if document is None:
            return not_found(f"{match['provider']}/namespaces", match["name"], match["rg"])
        return ApiResponse(200, document)

    def _list_pairings(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        if self.state.namespace(self._namespace_id(match)) is None:
            return not_found(f"{match['provider']}/namespaces", match["name"], match["rg"])
        return self._paged(request, self.state.disaster_recovery_configs(self._namespace_id(match)))

    def _get_pairing(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        if self.state.namespace(self._namespace_id(match)) is None:
            return not_found(f"{match['provider']}/namespaces", match["name"], match["rg"])
        for config in self.state.disaster_recovery_configs(self._namespace_id(match)):
            if str(config["name"]).lower() == match["alias"].lower():
                return ApiResponse(200, config)
        return not_found(
            f"{match['provider']}/namespaces/{match['name']}/disasterRecoveryConfigs", match["alias"], match["rg"]
        )

    def _put_namespace(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        return self._write_namespace(request, match, create=True)

    def _patch_namespace(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        return self._write_namespace(request, match, create=False)

    def _write_namespace(self, request: ApiRequest, match: re.Match[str], *, create: bool) -> ApiResponse:
        """PUT (create or update) and PATCH: apply what the body sets; answer 200 (201 when created) at once.

        Answering with provisioningState Succeeded and no Azure-AsyncOperation header ends the SDK's
        long-running PUT (ARM body-content polling) after the first response.
        """
        body = request.body
        if not isinstance(body, Mapping):
            return arm_error(400, "InvalidRequestContent", "The request content must be a JSON object.")
        resource_id = self._namespace_id(match)
        existing = self.state.namespace(resource_id)
        if existing is None and not create:
            return not_found(f"{match['provider']}/namespaces", match["name"], match["rg"])
        if existing is None:
            if not isinstance(body.get("location"), str):
                return arm_error(400, "LocationRequired", "The location property is required for this definition.")
            document = self._new_namespace(resource_id, match["name"], request)
        else:
            document = copy.deepcopy(existing)
        try:
            self._apply_namespace(document, body, request)
        except ValueError as error:
            return arm_error(400, "InvalidRequestContent", str(error))
        self.state.put_namespace(document)
        return ApiResponse(201 if existing is None else 200, document)

    def _new_namespace(self, resource_id: str, name: str, request: ApiRequest) -> dict[str, Any]:
        subscription = subscription_of(resource_id) or ""
        return {
            "sku": {"name": "Premium", "tier": "Premium", "capacity": 1},
            "id": resource_id,
            "name": name,
            "type": NAMESPACE_TYPE,
            "location": "",
            "tags": {},
            "properties": {
                "provisioningState": "Succeeded",
                "status": "Active",
                "metricId": f"{subscription}:{name.lower()}",
                "createdAt": arm_time(request.now),
                "updatedAt": arm_time(request.now),
                "serviceBusEndpoint": f"https://{name}.servicebus.windows.net:443/",
            },
        }

    def _apply_namespace(self, document: dict[str, Any], body: Mapping[str, Any], request: ApiRequest) -> None:
        for field in ("location", "tags", "sku"):
            if body.get(field) is not None:
                document[field] = copy.deepcopy(body[field])
        if body.get("identity") is not None:
            document["identity"] = self._identity(body["identity"], document.get("identity") or {}, document["id"])
        properties = body.get("properties")
        if properties is None:
            properties = {}
        if not isinstance(properties, Mapping):
            raise ValueError("properties must be an object.")
        target = document.setdefault("properties", {})
        for field in WRITABLE_PROPERTIES:
            if field in properties:
                target[field] = copy.deepcopy(properties[field])
        if properties.get("encryption") is not None:
            target["encryption"] = _encryption(properties["encryption"], target.get("encryption") or {})
        target["updatedAt"] = arm_time(request.now)

    def _identity(self, given: object, existing: Mapping[str, Any], resource_id: str) -> dict[str, Any]:
        if not isinstance(given, Mapping):
            raise ValueError("identity must be an object.")
        kind = str(given.get("type") or "None")
        kinds = {part.strip().lower() for part in kind.split(",")}
        identity: dict[str, Any] = {}
        if "systemassigned" in kinds:
            identity["principalId"] = existing.get("principalId") or self.state.principal_id_for(resource_id)
            identity["tenantId"] = self.state.tenant_id
        identity["type"] = kind
        if "userassigned" in kinds:
            previous = {k.lower(): v for k, v in (existing.get("userAssignedIdentities") or {}).items()}
            requested = given.get("userAssignedIdentities") or {}
            if not isinstance(requested, Mapping):
                raise ValueError("identity.userAssignedIdentities must be an object.")
            identity["userAssignedIdentities"] = {
                user: previous.get(user.lower())
                or {"clientId": stable_uuid("client", user), "principalId": self.state.principal_id_for(user)}
                for user in requested
            }
        return identity

    # --- Key Vault vaults -----------------------------------------------------------------------------

    def _vault_document(self, info: VaultInfo, request: ApiRequest) -> dict[str, Any] | None:
        vault = self.state.vault_state(info, request.now)
        if vault is None or not vault.exists:
            return None
        return vault_document(
            resource_id=info.resource_id,
            name=info.name,
            host=info.host,
            tenant_id=self.state.tenant_id,
            soft_delete=vault.soft_delete,
            purge_protection=vault.purge_protection,
            rbac=vault.rbac,
            access=vault.access,
            premium=self.state.has_hsm_keys(info),
            created=self.state.scenario.now - RESOURCE_AGE,
            network=vault.network,
        )

    def _list_vaults(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        return self._list_stores(request, match, hsm=False)

    def _get_vault(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        return self._get_store(request, match, hsm=False)

    def _list_stores(self, request: ApiRequest, match: re.Match[str], *, hsm: bool) -> ApiResponse:
        """The vaults (or Managed HSMs) of a subscription or resource group; a deleted one is listed only among
        the deleted ones. Vault listings take `$top` as their page size; HSM listings have none."""
        subscription, group = match["sub"].lower(), (match.groupdict().get("rg") or "").lower()
        if not self._known_subscription(subscription):
            return self._subscription_not_found(match["sub"])
        document_of = self._hsm_document if hsm else self._vault_document
        items = []
        for info in self.state.vaults:
            if info.managed_hsm != hsm or info.subscription.lower() != subscription:
                continue
            if group and group != VAULT_RESOURCE_GROUP:
                continue
            document = document_of(info, request)
            if document is not None:
                items.append(document)
        top = None if hsm else request.query.get("$top")
        size = int(top) if top and top.isdigit() and int(top) > 0 else None
        return self._paged(request, items, size)

    def _get_store(self, request: ApiRequest, match: re.Match[str], *, hsm: bool) -> ApiResponse:
        info = self.state.vault_by_name(match["name"])
        document = None
        if (
            info is not None
            and info.managed_hsm == hsm
            and info.subscription.lower() == match["sub"].lower()
            and match["rg"].lower() == VAULT_RESOURCE_GROUP
        ):
            document = (self._hsm_document if hsm else self._vault_document)(info, request)
        if document is None:
            kind = "Microsoft.KeyVault/managedHSMs" if hsm else "Microsoft.KeyVault/vaults"
            return not_found(kind, match["name"], match["rg"])
        return ApiResponse(200, document)

    # --- Managed HSMs --------------------------------------------------------------------------------

    def _hsm_document(self, info: VaultInfo, request: ApiRequest) -> dict[str, Any] | None:
        vault = self.state.vault_state(info, request.now)
        if vault is None or not vault.exists:
            return None
        return managed_hsm_document(
            resource_id=info.resource_id,
            name=info.name,
            host=info.host,
            tenant_id=self.state.tenant_id,
            purge_protection=vault.purge_protection,
            created=self.state.scenario.now - RESOURCE_AGE,
            network=vault.network,
        )

    def _list_hsms(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        return self._list_stores(request, match, hsm=True)

    def _get_hsm(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        return self._get_store(request, match, hsm=True)

    def _list_deleted_hsms(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        """Soft-deleted HSMs of a subscription, shaped as DeletedManagedHsm_List.json."""
        subscription = match["sub"].lower()
        if not self._known_subscription(subscription):
            return self._subscription_not_found(match["sub"])
        items = []
        for info in self.state.vaults:
            if not info.managed_hsm or info.subscription.lower() != subscription:
                continue
            vault = self.state.vault_state(info, request.now)
            if vault is None or vault.exists:
                continue
            items.append(
                {
                    "id": f"/subscriptions/{info.subscription}/providers/Microsoft.KeyVault/locations/"
                    f"{VAULT_LOCATION}/deletedManagedHSMs/{info.name}",
                    "name": info.name,
                    "type": "Microsoft.KeyVault/deletedManagedHSMs",
                    "properties": {
                        "mhsmId": info.resource_id,
                        "location": VAULT_LOCATION,
                        # As for vaults: the stand-in does not keep the moment of deletion.
                        "deletionDate": arm_time(request.now),
                        "scheduledPurgeDate": arm_time(request.now + SOFT_DELETE_RETENTION),
                        "purgeProtectionEnabled": vault.purge_protection,
                        "tags": {},
                    },
                }
            )
        return self._paged(request, items)

    # --- Resource Graph ---------------------------------------------------------------------------------

    def _resource_graph(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        def rows() -> list[resource_graph.Row]:
            found = [resource_graph.with_scope_columns(document) for document in self.state.namespaces()]
            for info in self.state.vaults:
                document = None if info.managed_hsm else self._vault_document(info, request)
                if document is not None:
                    found.append(resource_graph.with_scope_columns(document))
            return found

        return resource_graph.answer(request.body, rows, self._graph_results)

    def _list_deleted_vaults(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        """Soft-deleted vaults of a subscription, shaped as Vaults_ListDeleted answers."""
        subscription = match["sub"].lower()
        if not self._known_subscription(subscription):
            return self._subscription_not_found(match["sub"])
        items = []
        for info in self.state.vaults:
            if info.managed_hsm or info.subscription.lower() != subscription:
                continue
            vault = self.state.vault_state(info, request.now)
            if vault is None or vault.exists:
                continue
            items.append(
                {
                    "id": f"/subscriptions/{info.subscription}/providers/Microsoft.KeyVault/locations/"
                    f"{VAULT_LOCATION}/deletedVaults/{info.name}",
                    "name": info.name,
                    "type": "Microsoft.KeyVault/deletedVaults",
                    "properties": {
                        "vaultId": info.resource_id,
                        "location": VAULT_LOCATION,
                        # The stand-in does not keep the moment of deletion; now is within its bounds.
                        "deletionDate": arm_time(request.now),
                        "scheduledPurgeDate": arm_time(request.now + SOFT_DELETE_RETENTION),
                        "tags": {},
                        "purgeProtectionEnabled": vault.purge_protection,
                    },
                }
            )
        return self._paged(request, items)


def _encryption(given: object, existing: Mapping[str, Any]) -> dict[str, Any]:
    """The namespace's `encryption` after a write: keyVaultProperties as sent, keyVersion "" when versionless."""
    if not isinstance(given, Mapping):
        raise ValueError("properties.encryption must be an object.")
    entries = given.get("keyVaultProperties") or []
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise ValueError("properties.encryption.keyVaultProperties must be a list of objects.")
    properties = []
    for entry in entries:
        if not entry.get("keyName") or not entry.get("keyVaultUri"):
            raise ValueError("each keyVaultProperties entry needs keyName and keyVaultUri.")
        written: dict[str, Any] = {
            "keyName": entry["keyName"],
            "keyVaultUri": entry["keyVaultUri"],
            "keyVersion": entry.get("keyVersion") or "",
        }
        user = (entry.get("identity") or {}).get("userAssignedIdentity")
        if user:
            written["identity"] = {"userAssignedIdentity": user}
        properties.append(written)
    return {
        "keySource": given.get("keySource") or existing.get("keySource") or "Microsoft.KeyVault",
        "keyVaultProperties": properties,
        "requireInfrastructureEncryption": bool(
            given.get("requireInfrastructureEncryption", existing.get("requireInfrastructureEncryption", False))
        ),
    }

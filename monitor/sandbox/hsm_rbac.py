"""A Managed HSM's local RBAC on its data plane: the scenario's access as role assignments and definitions.

A Managed HSM has no access policies and ARM's role assignments do not reach its keys: its own data plane
answers `{hsm}/{scope}/providers/Microsoft.Authorization/roleAssignments` and `.../roleDefinitions`
(shaped as ListRoleAssignments-example.json and ListRoleDefinitions-example.json). Each principal's access
on the vault becomes one assignment at `/keys` (every key), and a key's own `access` one at `/keys/<name>`:
{get, wrapKey, unwrapKey} exactly is *Managed HSM Crypto Service Encryption User*, `all` is *Managed HSM
Crypto User*, any other set a custom role whose dataActions are exactly those permissions. Listing at `/`
returns the assignments at every scope, as the HSM does; at `/keys/<name>` those at, above and below it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from monitor.domain.model import name_id
from monitor.sandbox.rbac import UnsupportedFilterError, parse_filter
from monitor.sandbox.resources import spell_permissions, stable_uuid
from monitor.sandbox.state import SandboxState, VaultInfo
from monitor.sandbox.wire import ApiRequest, ApiResponse, Router, keyvault_error, page

PROVIDER = "/providers/Microsoft.Authorization"
DEFINITION_PREFIX = f"Microsoft.KeyVault{PROVIDER}/roleDefinitions/"
CRYPTO_SERVICE_ENCRYPTION_USER = "33413926-3206-4cdd-b39a-83574fe37a17"
CRYPTO_USER = "21dbd100-6940-42c2-9190-5d6cb909625b"
CRYPTO_AUDITOR = "2c18b078-7c48-4d3a-af88-5a3a1b3f82b3"
_KEYS = "Microsoft.KeyVault/managedHsm/keys"
# Each key permission and the HSM data action that grants it (an HSM reads a key with an action).
DATA_ACTIONS = {
    "get": f"{_KEYS}/read/action",
    "list": f"{_KEYS}/read/action",
    "create": f"{_KEYS}/create",
    "update": f"{_KEYS}/write/action",
    "import": f"{_KEYS}/import/action",
    "delete": f"{_KEYS}/delete",
    "recover": "Microsoft.KeyVault/managedHsm/keys/deletedKeys/recover/action",
    "backup": f"{_KEYS}/backup/action",
    "restore": f"{_KEYS}/restore/action",
    "purge": "Microsoft.KeyVault/managedHsm/keys/deletedKeys/delete",
    "encrypt": f"{_KEYS}/encrypt/action",
    "decrypt": f"{_KEYS}/decrypt/action",
    "wrapkey": f"{_KEYS}/wrap/action",
    "unwrapkey": f"{_KEYS}/unwrap/action",
    "sign": f"{_KEYS}/sign/action",
    "verify": f"{_KEYS}/verify/action",
    "release": f"{_KEYS}/release/action",
    "rotate": f"{_KEYS}/rotate/action",
}
SERVICE_ENCRYPTION_PERMISSIONS = frozenset({"get", "wrapkey", "unwrapkey"})
PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class HsmRole:
    guid: str
    name: str
    description: str
    builtin: bool
    data_actions: tuple[str, ...]

    def document(self) -> dict[str, Any]:
        return {
            "id": f"{DEFINITION_PREFIX}{self.guid}",
            "name": self.guid,
            "type": "Microsoft.Authorization/roleDefinitions",
            "properties": {
                "roleName": self.name,
                "description": self.description,
                "type": "AKVBuiltInRole" if self.builtin else "CustomRole",
                "permissions": [
                    {"actions": [], "notActions": [], "dataActions": list(self.data_actions), "notDataActions": []}
                ],
                "assignableScopes": ["/"],
            },
        }


BUILTIN_ROLES = {
    role.guid: role
    for role in (
        HsmRole(
            CRYPTO_SERVICE_ENCRYPTION_USER,
            "Managed HSM Crypto Service Encryption User",
            "Grants permission to use a key for service encryption.",
            True,
            (f"{_KEYS}/read/action", f"{_KEYS}/wrap/action", f"{_KEYS}/unwrap/action"),
        ),
        HsmRole(
            CRYPTO_USER,
            "Managed HSM Crypto User",
            "Grants permission to perform all key management operations except purge or recover deleted keys, "
            "and export keys.",
            True,
            tuple(sorted({DATA_ACTIONS[p] for p in DATA_ACTIONS if p not in ("recover", "purge")})),
        ),
        HsmRole(
            CRYPTO_AUDITOR,
            "Managed HSM Crypto Auditor",
            "Grants read permission to read (but not use) key attributes.",
            True,
            (
                f"{_KEYS}/read/action",
                "Microsoft.KeyVault/managedHsm/keys/deletedKeys/read/action",
                "Microsoft.KeyVault/managedHsm/roleAssignments/read/action",
                "Microsoft.KeyVault/managedHsm/roleDefinitions/read/action",
            ),
        ),
    )
}


def role_for(permissions: Iterable[str]) -> HsmRole:
    """The HSM role that grants exactly `permissions` (key permissions, any case)."""
    lowered = frozenset(p.lower() for p in permissions)
    if "all" in lowered:
        return BUILTIN_ROLES[CRYPTO_USER]
    if lowered == SERVICE_ENCRYPTION_PERMISSIONS:
        return BUILTIN_ROLES[CRYPTO_SERVICE_ENCRYPTION_USER]
    actions = tuple(sorted({DATA_ACTIONS.get(p, f"{_KEYS}/{p}/action") for p in lowered}))
    spelled = ", ".join(spell_permissions(lowered))
    return HsmRole(
        stable_uuid("hsm-role", *actions),
        f"HSM keys: {spelled}",
        f"Custom role granting exactly these key permissions: {spelled}.",
        False,
        actions,
    )


def clean_scope(scope: str) -> str:
    """`/`, `/keys` or `/keys/<name>` with single slashes (the SDK sends `//providers/...` for `/`)."""
    return "/" + "/".join(part for part in scope.split("/") if part)


@dataclass(frozen=True, slots=True)
class HsmAssignment:
    hsm: VaultInfo
    scope: str  # "/keys" or "/keys/<name>"
    principal_id: str
    role: HsmRole

    @property
    def name(self) -> str:
        return stable_uuid("hsm-assignment", self.hsm.id, self.scope.lower(), self.principal_id, self.role.guid)

    def document(self) -> dict[str, Any]:
        return {
            "id": f"{self.scope}{PROVIDER}/roleAssignments/{self.name}",
            "name": self.name,
            "type": "Microsoft.Authorization/roleAssignments",
            "properties": {
                "scope": self.scope,
                "roleDefinitionId": f"{DEFINITION_PREFIX}{self.role.guid}",
                "principalId": self.principal_id,
            },
        }


def _related(assignment_scope: str, query: str) -> bool:
    """An assignment is listed at a scope it is at, above or below (all of them at `/`)."""
    a, q = assignment_scope.lower(), query.lower()
    return q in ("/", a) or q.startswith(a + "/") or a.startswith(q + "/")


class HsmRbac:
    """The local RBAC routes of every Managed HSM the scenario names."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._custom: dict[str, HsmRole] = {}

    def assignments(self, hsm: VaultInfo, request: ApiRequest) -> list[HsmAssignment]:
        vault = self.state.vault_state(hsm, request.now)
        if vault is None or not vault.exists:
            return []
        found: list[HsmAssignment] = []
        for principal, permissions in vault.access.items():
            if permissions:  # an emptied set means the assignment was removed
                found.append(HsmAssignment(hsm, "/keys", principal, self._register(role_for(permissions))))
        world = self.state.world
        for key_id in self.state.key_ids(hsm):
            for principal, permissions in world.key_access.get(key_id, {}).items():
                if permissions:
                    scope = f"/keys/{self.state.key_name(key_id)}"
                    found.append(HsmAssignment(hsm, scope, principal, self._register(role_for(permissions))))
        return found

    def _register(self, role: HsmRole) -> HsmRole:
        if not role.builtin:
            with self._lock:
                self._custom.setdefault(role.guid, role)
        return role

    def add_routes(self, router: Router) -> None:
        scope = r"(?P<scope>(?:/+keys(?:/+[^/]+)?)?)/+"
        router.add("GET", rf"{scope}providers/Microsoft\.Authorization/roleAssignments/?", self._list_assignments)
        router.add("GET", rf"{scope}providers/Microsoft\.Authorization/roleDefinitions/?", self._list_definitions)
        router.add(
            "GET", rf"{scope}providers/Microsoft\.Authorization/roleDefinitions/(?P<guid>[^/]+)", self._get_definition
        )

    def _hsm(self, request: ApiRequest) -> VaultInfo | None:
        info = self.state.vault(request.vault_host or "")
        return info if info.managed_hsm else None

    @staticmethod
    def _not_hsm() -> ApiResponse:
        # A vault's data plane has no role-management API: Key Vault answers an unknown path so.
        return keyvault_error(404, "NotFound", "The requested resource is only available on a Managed HSM.")

    def _paged(self, request: ApiRequest, items: list[dict[str, Any]]) -> ApiResponse:
        chunk, next_link = page(items, request, PAGE_SIZE, "$skiptoken")
        body: dict[str, Any] = {"value": list(chunk)}
        if next_link:
            body["nextLink"] = next_link
        return ApiResponse(200, body)

    def _list_assignments(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        hsm = self._hsm(request)
        if hsm is None:
            return self._not_hsm()
        query = clean_scope(match["scope"])
        try:
            at_scope, principal = parse_filter(request.query.get("$filter", ""))
        except UnsupportedFilterError:
            return keyvault_error(400, "BadParameter", f"Invalid filter: {request.query.get('$filter')}")
        value = [
            assignment.document()
            for assignment in self.assignments(hsm, request)
            if _related(assignment.scope, query)
            and (not at_scope or assignment.scope.lower() == query.lower())
            and (principal is None or name_id(assignment.principal_id) == principal)
        ]
        return self._paged(request, value)

    def _definitions(self) -> list[HsmRole]:
        with self._lock:
            return [*BUILTIN_ROLES.values(), *self._custom.values()]

    def _list_definitions(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        hsm = self._hsm(request)
        if hsm is None:
            return self._not_hsm()
        self.assignments(hsm, request)  # registers the custom roles in use
        return self._paged(request, [role.document() for role in self._definitions()])

    def _get_definition(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        hsm = self._hsm(request)
        if hsm is None:
            return self._not_hsm()
        self.assignments(hsm, request)
        for role in self._definitions():
            if role.guid == match["guid"].lower():
                return ApiResponse(200, role.document())
        return keyvault_error(404, "RoleDefinitionNotFound", f"Role definition {match['guid']} was not found.")

"""Azure RBAC for RBAC vaults: the scenario's effective key permissions as role assignments and definitions.

For a vault with `rbac: true`, each principal's effective access at the clock's instant becomes one
assignment at the vault's scope: {get, wrapKey, unwrapKey} exactly is *Key Vault Crypto Service
Encryption User*, `all` is *Key Vault Crypto Officer*, and any other set is a custom role whose
dataActions are exactly those permissions.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from monitor.sandbox.resources import spell_permissions, stable_uuid
from monitor.sandbox.state import SandboxState, VaultInfo
from monitor.sandbox.wire import ApiRequest, ApiResponse, Router, arm_error, arm_time

PROVIDER = "/providers/Microsoft.Authorization"
ASSIGNMENT_TYPE = "Microsoft.Authorization/roleAssignments"
DEFINITION_TYPE = "Microsoft.Authorization/roleDefinitions"
CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
CRYPTO_OFFICER = "14b46e9e-c2b7-41b4-b07b-48a6ebf60603"
ADMINISTRATOR = "00482a5a-887f-4fb3-b363-3b7fe8e74483"
_KEYS = "Microsoft.KeyVault/vaults/keys"
# Each access-policy key permission and the data action that grants it under RBAC.
DATA_ACTIONS = {
    "get": f"{_KEYS}/read",
    "list": f"{_KEYS}/read",
    "create": f"{_KEYS}/create/action",
    "update": f"{_KEYS}/update/action",
    "import": f"{_KEYS}/import/action",
    "delete": f"{_KEYS}/delete",
    "recover": f"{_KEYS}/recover/action",
    "backup": f"{_KEYS}/backup/action",
    "restore": f"{_KEYS}/restore/action",
    "purge": f"{_KEYS}/purge/action",
    "encrypt": f"{_KEYS}/encrypt/action",
    "decrypt": f"{_KEYS}/decrypt/action",
    "wrapkey": f"{_KEYS}/wrap/action",
    "unwrapkey": f"{_KEYS}/unwrap/action",
    "sign": f"{_KEYS}/sign/action",
    "verify": f"{_KEYS}/verify/action",
    "release": f"{_KEYS}/release/action",
    "rotate": f"{_KEYS}/rotate/action",
    "getrotationpolicy": "Microsoft.KeyVault/vaults/keyrotationpolicies/read",
    "setrotationpolicy": "Microsoft.KeyVault/vaults/keyrotationpolicies/write",
}
SERVICE_ENCRYPTION_PERMISSIONS = frozenset({"get", "wrapkey", "unwrapkey"})
# When the built-in roles were published, as ARM reports it for them.
_BUILTIN_CREATED = datetime.fromisoformat("2020-05-19T17:52:47+00:00")


@dataclass(frozen=True, slots=True)
class RoleDefinition:
    """A role: its GUID, name, and the actions and data actions it grants."""

    guid: str
    name: str
    description: str
    builtin: bool
    actions: tuple[str, ...]
    data_actions: tuple[str, ...]

    def document(self, scope: str, subscription: str) -> dict[str, Any]:
        """The role definition as GET .../roleDefinitions/{guid} returns it (api-version 2022-04-01)."""
        prefix = "" if scope == "/" else scope
        return {
            "id": f"{prefix}{PROVIDER}/roleDefinitions/{self.guid}",
            "name": self.guid,
            "type": DEFINITION_TYPE,
            "properties": {
                "roleName": self.name,
                "type": "BuiltInRole" if self.builtin else "CustomRole",
                "description": self.description,
                "assignableScopes": ["/"] if self.builtin else [f"/subscriptions/{subscription}"],
                "permissions": [
                    {
                        "actions": list(self.actions),
                        "notActions": [],
                        "dataActions": list(self.data_actions),
                        "notDataActions": [],
                    }
                ],
                "createdOn": arm_time(_BUILTIN_CREATED),
                "updatedOn": arm_time(_BUILTIN_CREATED),
                "createdBy": None,
                "updatedBy": None,
            },
        }


BUILTIN_ROLES = {
    role.guid: role
    for role in (
        RoleDefinition(
            CRYPTO_SERVICE_ENCRYPTION_USER,
            "Key Vault Crypto Service Encryption User",
            "Read metadata of keys and perform wrap/unwrap operations. Only works for key vaults that use the "
            "'Azure role-based access control' permission model.",
            True,
            (
                "Microsoft.EventGrid/eventSubscriptions/write",
                "Microsoft.EventGrid/eventSubscriptions/read",
                "Microsoft.EventGrid/eventSubscriptions/delete",
            ),
            (f"{_KEYS}/read", f"{_KEYS}/wrap/action", f"{_KEYS}/unwrap/action"),
        ),
        RoleDefinition(
            CRYPTO_OFFICER,
            "Key Vault Crypto Officer",
            "Perform any action on the keys of a key vault, except manage permissions. Only works for key vaults "
            "that use the 'Azure role-based access control' permission model.",
            True,
            (
                "Microsoft.Authorization/*/read",
                "Microsoft.KeyVault/vaults/*/read",
                "Microsoft.KeyVault/operations/read",
            ),
            (f"{_KEYS}/*", "Microsoft.KeyVault/vaults/keyrotationpolicies/*"),
        ),
        RoleDefinition(
            ADMINISTRATOR,
            "Key Vault Administrator",
            "Perform all data plane operations on a key vault and all objects in it, including certificates, keys, "
            "and secrets. Cannot manage key vault resources or manage role assignments. Only works for key vaults "
            "that use the 'Azure role-based access control' permission model.",
            True,
            (
                "Microsoft.Authorization/*/read",
                "Microsoft.KeyVault/vaults/*/read",
                "Microsoft.KeyVault/operations/read",
            ),
            ("Microsoft.KeyVault/vaults/*",),
        ),
    )
}


def role_for(permissions: Iterable[str]) -> RoleDefinition:
    """The role that grants exactly `permissions` (Key Vault key permissions, any case)."""
    lowered = frozenset(p.lower() for p in permissions)
    if "all" in lowered:
        return BUILTIN_ROLES[CRYPTO_OFFICER]
    if lowered == SERVICE_ENCRYPTION_PERMISSIONS:
        return BUILTIN_ROLES[CRYPTO_SERVICE_ENCRYPTION_USER]
    actions = sorted({DATA_ACTIONS.get(p, f"{_KEYS}/{p}/action") for p in lowered})
    spelled = ", ".join(spell_permissions(lowered))
    return RoleDefinition(
        stable_uuid("role", *actions),
        f"Key Vault keys: {spelled}",
        f"Custom role granting exactly these key permissions: {spelled}.",
        False,
        (),
        tuple(actions),
    )


def clean_scope(scope: str) -> str:
    """A scope with single slashes and no trailing slash (the SDK sends `//subscriptions/...`); the root is '/'."""
    return "/" + "/".join(part for part in scope.split("/") if part)


def normalise_scope(scope: str) -> str:
    """A scope as compared: `clean_scope`, lower-cased (ARM scopes are case-insensitive)."""
    return clean_scope(scope).lower()


def scope_relation(assignment: str, query: str) -> str | None:
    """Whether an assignment's scope is 'at', 'above' or 'below' a query scope (both normalised), or neither."""
    if assignment == query:
        return "at"
    if assignment == "/" or query.startswith(assignment + "/"):
        return "above"
    if query == "/" or assignment.startswith(query + "/"):
        return "below"
    return None


class UnsupportedFilterError(ValueError):
    """A $filter the sandbox (and the Authorization API) does not support."""


def parse_filter(text: str) -> tuple[bool, str | None]:
    """(atScope(), the principal) from a roleAssignments $filter.

    Raises UnsupportedFilterError for anything else.
    """
    at_scope, principal = False, None
    for term in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE) if text.strip() else []:
        if re.fullmatch(r"atScope\(\)", term, re.IGNORECASE):
            at_scope = True
        elif found := re.fullmatch(r"(?:principalId\s+eq\s+'([^']*)'|assignedTo\('([^']*)'\))", term, re.IGNORECASE):
            principal = (found[1] or found[2] or "").lower()
        else:
            raise UnsupportedFilterError(text)
    return at_scope, principal


@dataclass(frozen=True, slots=True)
class RoleAssignment:
    """One principal's role at one vault's scope."""

    vault: VaultInfo
    principal_id: str
    role: RoleDefinition

    @property
    def name(self) -> str:
        return stable_uuid("assignment", self.vault.resource_id, self.principal_id, self.role.guid)

    @property
    def role_definition_id(self) -> str:
        return f"/subscriptions/{self.vault.subscription}{PROVIDER}/roleDefinitions/{self.role.guid}"

    def document(self, created: datetime) -> dict[str, Any]:
        """The assignment as the roleAssignments list returns it (api-version 2022-04-01)."""
        return {
            "id": f"{self.vault.resource_id}{PROVIDER}/roleAssignments/{self.name}",
            "name": self.name,
            "type": ASSIGNMENT_TYPE,
            "properties": {
                "roleDefinitionId": self.role_definition_id,
                "principalId": self.principal_id,
                "principalType": "ServicePrincipal",
                "scope": self.vault.resource_id,
                "condition": None,
                "conditionVersion": None,
                "createdOn": arm_time(created),
                "updatedOn": arm_time(created),
                "createdBy": None,
                "updatedBy": None,
                "delegatedManagedIdentityResourceId": None,
                "description": None,
            },
        }


class Rbac:
    """Role assignments derived from the World, and the definitions they use (built-in and custom)."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._custom: dict[str, RoleDefinition] = {}

    def assignments(self, now: datetime) -> list[RoleAssignment]:
        """Every assignment at `now`: one per principal with access on each existing RBAC vault."""
        found = []
        for info in self.state.vaults:
            vault = self.state.vault_state(info, now)
            if vault is None or not vault.exists or not vault.rbac:
                continue
            for principal, permissions in vault.access.items():
                if permissions:  # an emptied set means the assignment was removed
                    role = role_for(permissions)
                    if not role.builtin:
                        with self._lock:
                            self._custom.setdefault(role.guid, role)
                    found.append(RoleAssignment(info, principal, role))
        return found

    def definition(self, guid: str, now: datetime) -> RoleDefinition | None:
        """A built-in role, or a custom one some assignment uses (now or earlier)."""
        wanted = guid.lower()
        if wanted in BUILTIN_ROLES:
            return BUILTIN_ROLES[wanted]
        self.assignments(now)  # registers the custom roles in use
        with self._lock:
            return self._custom.get(wanted)

    def definitions(self, now: datetime) -> list[RoleDefinition]:
        self.assignments(now)
        with self._lock:
            return [*BUILTIN_ROLES.values(), *self._custom.values()]

    # --- routes ---------------------------------------------------------------------------------------

    def add_routes(self, router: Router) -> None:
        scope = r"(?P<scope>.*)"
        router.add("GET", rf"{scope}/providers/Microsoft\.Authorization/roleAssignments/?", self._list_assignments)
        router.add("GET", rf"{scope}/providers/Microsoft\.Authorization/roleDefinitions/?", self._list_definitions)
        router.add(
            "GET", rf"{scope}/providers/Microsoft\.Authorization/roleDefinitions/(?P<guid>[^/]+)", self._get_definition
        )

    def _subscription(self, scope: str) -> str:
        parts = scope.strip("/").split("/")
        if len(parts) >= 2 and parts[0].lower() == "subscriptions":
            return parts[1]
        return self.state.subscriptions()[0]

    def _list_assignments(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        query = normalise_scope(match["scope"])
        try:
            at_scope, principal = parse_filter(request.query.get("$filter", ""))
        except UnsupportedFilterError:
            return arm_error(400, "UnsupportedQuery", f"The filter '{request.query.get('$filter')}' is not supported.")
        created = self.state.scenario.now
        value = []
        for assignment in self.assignments(request.now):
            relation = scope_relation(normalise_scope(assignment.vault.resource_id), query)
            if relation is None or (at_scope and relation == "below"):
                continue
            if principal is not None and assignment.principal_id.lower() != principal:
                continue
            value.append(assignment.document(created))
        return ApiResponse(200, {"value": value})

    def _list_definitions(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        scope = clean_scope(match["scope"])
        wanted = None
        found = re.fullmatch(r"\s*roleName\s+eq\s+'([^']*)'\s*", request.query.get("$filter", ""), re.IGNORECASE)
        if found:
            wanted = found[1].lower()
        subscription = self._subscription(scope)
        value = [
            role.document(scope, subscription)
            for role in self.definitions(request.now)
            if wanted is None or role.name.lower() == wanted
        ]
        return ApiResponse(200, {"value": value})

    def _get_definition(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        scope = clean_scope(match["scope"])
        role = self.definition(match["guid"], request.now)
        if role is None:
            return arm_error(
                404,
                "RoleDefinitionDoesNotExist",
                f"The specified role definition with ID '{match['guid']}' does not exist.",
            )
        return ApiResponse(200, role.document(scope, self._subscription(scope)))

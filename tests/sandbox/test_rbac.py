"""Role assignments and definitions for RBAC vaults, driven by the real AuthorizationManagementClient."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError

from monitor.sandbox import Sandbox
from monitor.sandbox.rbac import CRYPTO_OFFICER, CRYPTO_SERVICE_ENCRYPTION_USER, role_for
from tests.sandbox.clients import authorization
from tests.sandbox.world import KV_PROD, KV_RBAC, LATECOMER, NOW, OFFICER, PARTIAL, SB_PRINCIPAL, SUB_A


def _assignments(sandbox: Sandbox, scope: str, filter: str | None = None) -> list[Any]:
    async def fetch() -> list[Any]:
        async with authorization(sandbox) as client:
            return [a async for a in client.role_assignments.list_for_scope(scope, filter=filter)]

    return asyncio.run(fetch())


def test_an_rbac_vaults_access_becomes_role_assignments_at_its_scope(sandbox: Sandbox) -> None:
    """Each principal's effective access on an RBAC vault is one assignment at the vault's scope."""
    scope = sandbox.vault_resource_id(KV_RBAC)
    found = {a.principal_id: a for a in _assignments(sandbox, scope)}
    assert set(found) == {SB_PRINCIPAL, OFFICER, PARTIAL}
    assert found[SB_PRINCIPAL].role_definition_id.endswith(CRYPTO_SERVICE_ENCRYPTION_USER)
    assert found[OFFICER].role_definition_id.endswith(CRYPTO_OFFICER)
    assert found[SB_PRINCIPAL].scope == scope and found[SB_PRINCIPAL].principal_type == "ServicePrincipal"


def test_an_access_policy_vault_has_no_role_assignments(sandbox: Sandbox) -> None:
    """A vault that uses access policies contributes no assignments."""
    assert _assignments(sandbox, sandbox.vault_resource_id(KV_PROD)) == []


def test_a_subscription_scope_lists_assignments_below_it_unless_at_scope(sandbox: Sandbox) -> None:
    """Without a filter a subscription scope includes the vault's assignments; atScope() excludes them."""
    subscription = f"/subscriptions/{SUB_A}"
    assert len(_assignments(sandbox, subscription)) == 3
    assert _assignments(sandbox, subscription, "atScope()") == []


def test_a_key_scope_sees_the_vault_assignments_above_it(sandbox: Sandbox) -> None:
    """atScope() at a key inside the vault includes the assignments at the vault (above it)."""
    key_scope = sandbox.vault_resource_id(KV_RBAC) + "/keys/sb-rbac"
    assert len(_assignments(sandbox, key_scope, "atScope()")) == 3


def test_a_principal_filter_keeps_that_principals_assignments(sandbox: Sandbox) -> None:
    """principalId eq '<id>' at the subscription returns only that principal's assignment."""
    found = _assignments(sandbox, f"/subscriptions/{SUB_A}", f"principalId eq '{OFFICER}'")
    assert [a.principal_id for a in found] == [OFFICER]


def test_role_assignments_follow_set_access_changes(sandbox: Sandbox) -> None:
    """A set_access on an RBAC vault adds an assignment once the clock passes it."""
    scope = sandbox.vault_resource_id(KV_RBAC)
    sandbox.clock.set(NOW + timedelta(hours=3))
    found = {a.principal_id: a for a in _assignments(sandbox, scope)}
    assert found[LATECOMER].role_definition_id.endswith(CRYPTO_SERVICE_ENCRYPTION_USER)


def test_role_definitions_resolve_by_id_with_their_data_actions(sandbox: Sandbox) -> None:
    """get_by_id resolves built-in and custom roles; a partial grant is a custom role with exactly its actions."""
    found = {a.principal_id: a for a in _assignments(sandbox, sandbox.vault_resource_id(KV_RBAC))}

    async def definitions() -> dict[str, Any]:
        async with authorization(sandbox) as client:
            return {p: await client.role_definitions.get_by_id(a.role_definition_id) for p, a in found.items()}

    roles = asyncio.run(definitions())
    assert roles[SB_PRINCIPAL].role_name == "Key Vault Crypto Service Encryption User"
    assert roles[SB_PRINCIPAL].permissions[0].data_actions == [
        "Microsoft.KeyVault/vaults/keys/read",
        "Microsoft.KeyVault/vaults/keys/wrap/action",
        "Microsoft.KeyVault/vaults/keys/unwrap/action",
    ]
    assert "Microsoft.KeyVault/vaults/keys/*" in roles[OFFICER].permissions[0].data_actions
    assert roles[PARTIAL].role_type == "CustomRole"
    assert roles[PARTIAL].permissions[0].data_actions == [
        "Microsoft.KeyVault/vaults/keys/read",
        "Microsoft.KeyVault/vaults/keys/wrap/action",
    ]


def test_an_unknown_role_definition_is_not_found(sandbox: Sandbox) -> None:
    """get_by_id of a role nobody defined raises ResourceNotFoundError."""

    async def fetch() -> None:
        async with authorization(sandbox) as client:
            await client.role_definitions.get_by_id(
                f"/subscriptions/{SUB_A}/providers/Microsoft.Authorization/roleDefinitions/00000000-0000-0000-0000-000000000001"
            )

    with pytest.raises(ResourceNotFoundError):
        asyncio.run(fetch())


def test_the_administrator_role_is_served_too(sandbox: Sandbox) -> None:
    """The built-in Key Vault Administrator resolves with dataActions Microsoft.KeyVault/vaults/*."""

    async def fetch() -> Any:
        async with authorization(sandbox) as client:
            return await client.role_definitions.get_by_id(
                "/providers/Microsoft.Authorization/roleDefinitions/00482a5a-887f-4fb3-b363-3b7fe8e74483"
            )

    role = asyncio.run(fetch())
    assert role.role_name == "Key Vault Administrator"
    assert role.permissions[0].data_actions == ["Microsoft.KeyVault/vaults/*"]


def test_role_for_maps_permission_sets_as_documented() -> None:
    """{get, wrapKey, unwrapKey} is the encryption-user role, all is Crypto Officer, the rest custom and stable."""
    assert role_for(["get", "wrapKey", "unwrapKey"]).guid == CRYPTO_SERVICE_ENCRYPTION_USER
    assert role_for(["all", "get"]).guid == CRYPTO_OFFICER
    assert role_for(["unwrapKey", "get"]).guid == role_for(["GET", "unwrapkey"]).guid
    assert not role_for(["get"]).builtin

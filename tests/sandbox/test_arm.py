"""ARM at the sandbox's root, driven by the real async management clients over HTTPS."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.mgmt.resource.subscriptions.aio import SubscriptionClient
from azure.mgmt.servicebus.models import (
    Encryption,
    Identity,
    KeyVaultProperties,
    SBNamespace,
    SBNamespaceUpdateParameters,
    SBNamespaceUpdateProperties,
    SBSku,
)

from monitor.sandbox import AsyncStaticTokenCredential, Sandbox
from tests.sandbox.clients import keyvault_arm, raw, servicebus
from tests.sandbox.world import (
    KV_DOOMED,
    KV_OLD,
    KV_PROD,
    NOW,
    SB_PRINCIPAL,
    SUB_A,
    SUB_B,
    USER_IDENTITY,
    USER_PRINCIPAL,
    scenario,
)


def test_subscriptions_come_from_the_namespace_ids(sandbox: Sandbox) -> None:
    """GET /subscriptions lists each subscription a namespace lives in, in the shape ARM uses."""
    status, _, body = asyncio.run(raw(sandbox, "GET", "/subscriptions?api-version=2022-12-01"))
    assert status == 200
    assert [s["subscriptionId"] for s in body["value"]] == [SUB_A, SUB_B]
    first = body["value"][0]
    assert first["id"] == f"/subscriptions/{SUB_A}" and first["state"] == "Enabled" and first["tenantId"]


def test_the_subscription_client_lists_them_too(sandbox: Sandbox) -> None:
    """The real SubscriptionClient reads the sandbox's subscriptions with their tenant."""

    async def listed() -> list[tuple[str | None, str | None]]:
        async with SubscriptionClient(
            AsyncStaticTokenCredential(), base_url=sandbox.url, connection_verify=str(sandbox.ca_path)
        ) as client:
            return [(s.subscription_id, s.tenant_id) async for s in client.subscriptions.list()]

    assert asyncio.run(listed()) == [(SUB_A, sandbox.state.tenant_id), (SUB_B, sandbox.state.tenant_id)]


def test_namespaces_are_listed_per_subscription_across_next_link_pages() -> None:
    """namespaces.list follows absolute nextLinks back to the sandbox, page size as configured."""
    with Sandbox(scenario(), arm_page_size=2) as sandbox:

        async def names() -> list[str | None]:
            async with servicebus(sandbox) as client:
                return [n.name async for n in client.namespaces.list()]

        assert asyncio.run(names()) == ["sb-prod", "sb-rbac", "sb-old", "sb-doomed"]
        assert sandbox.requests.count(service="arm", path="/namespaces", status=200) == 2


def test_a_namespace_shows_its_identity_and_encryption(sandbox: Sandbox) -> None:
    """namespaces.get returns the scenario's CMK settings: versionless keyVersion "", user-assigned identity."""

    async def fetch() -> tuple[Any, Any]:
        async with servicebus(sandbox) as client:
            return await client.namespaces.get("rg-sb-doomed", "sb-doomed"), await client.namespaces.get(
                "rg-sb-prod", "sb-prod"
            )

    doomed, prod = asyncio.run(fetch())
    assert doomed.sku.name == "Premium" and doomed.identity.type == "SystemAssigned, UserAssigned"
    assert doomed.identity.principal_id == SB_PRINCIPAL
    assert doomed.identity.user_assigned_identities[USER_IDENTITY].principal_id == USER_PRINCIPAL
    [reference] = doomed.encryption.key_vault_properties
    assert (reference.key_name, reference.key_vault_uri, reference.key_version) == ("sb-doomed", KV_DOOMED, "c" * 32)
    assert reference.identity.user_assigned_identity == USER_IDENTITY
    [versionless] = prod.encryption.key_vault_properties
    assert versionless.key_version == "" and versionless.identity is None
    assert prod.tags == {"owner": "payments-oncall"}


def test_an_unknown_namespace_is_not_found(sandbox: Sandbox) -> None:
    """namespaces.get for a namespace the sandbox does not have raises ResourceNotFoundError."""

    async def fetch() -> None:
        async with servicebus(sandbox) as client:
            await client.namespaces.get("rg-nowhere", "sb-nowhere")

    with pytest.raises(ResourceNotFoundError):
        asyncio.run(fetch())


def test_create_or_update_changes_the_key_vault_properties(sandbox: Sandbox) -> None:
    """begin_create_or_update (a long-running PUT) finishes at once and the new keyVaultProperties stick."""

    async def update() -> tuple[Any, Any]:
        async with servicebus(sandbox) as client:
            namespace = await client.namespaces.get("rg-sb-prod", "sb-prod")
            namespace.encryption.key_vault_properties = [
                KeyVaultProperties(key_name="sb-cmk", key_vault_uri=KV_PROD, key_version="2" * 32),
                KeyVaultProperties(key_name="sb-old", key_vault_uri=KV_OLD),
            ]
            poller = await client.namespaces.begin_create_or_update(
                "rg-sb-prod", "sb-prod", namespace, polling_interval=0
            )
            return await poller.result(), await client.namespaces.get("rg-sb-prod", "sb-prod")

    result, fetched = asyncio.run(update())
    for namespace in (result, fetched):
        assert [(p.key_name, p.key_version) for p in namespace.encryption.key_vault_properties] == [
            ("sb-cmk", "2" * 32),
            ("sb-old", ""),
        ]
    assert fetched.identity.principal_id == SB_PRINCIPAL  # kept: principal ids are read-only


def test_update_patches_the_encryption_of_a_namespace(sandbox: Sandbox) -> None:
    """namespaces.update (PATCH) applies a new encryption block and answers 200 with the resource."""

    async def update() -> Any:
        async with servicebus(sandbox) as client:
            parameters = SBNamespaceUpdateParameters(
                properties=SBNamespaceUpdateProperties(
                    encryption=Encryption(
                        key_source="Microsoft.KeyVault",
                        key_vault_properties=[KeyVaultProperties(key_name="sb-expiring", key_vault_uri=KV_PROD)],
                    )
                )
            )
            return await client.namespaces.update("rg-sb-prod", "sb-prod", parameters)

    updated = asyncio.run(update())
    assert [p.key_name for p in updated.encryption.key_vault_properties] == ["sb-expiring"]
    stored = sandbox.namespace(
        f"/subscriptions/{SUB_A}/resourceGroups/rg-sb-prod/providers/Microsoft.ServiceBus/namespaces/sb-prod"
    )
    assert (
        stored is not None and stored["properties"]["encryption"]["keyVaultProperties"][0]["keyName"] == "sb-expiring"
    )


def test_creating_a_namespace_makes_a_new_resource(sandbox: Sandbox) -> None:
    """A PUT for a namespace that does not exist creates it (201) and the list then includes it."""

    async def create() -> tuple[Any, list[str | None]]:
        async with servicebus(sandbox, SUB_B) as client:
            body = SBNamespace(
                location="West Europe",
                sku=SBSku(name="Premium", tier="Premium", capacity=1),
                identity=Identity(type="SystemAssigned"),
            )
            poller = await client.namespaces.begin_create_or_update("rg-new", "sb-new", body, polling_interval=0)
            created = await poller.result()
            return created, [n.name async for n in client.namespaces.list()]

    created, names = asyncio.run(create())
    assert created.identity.principal_id  # a new system-assigned identity gets a principal
    assert names == ["sb-other", "sb-new"]
    assert sandbox.requests.count(service="arm", method="PUT", status=201) == 1


def test_raw_extra_namespaces_are_listed_for_the_adapters_filter(sandbox: Sandbox) -> None:
    """Namespaces added raw (Standard tier, Premium without CMK) are listed beside the scenario's."""
    sandbox.add_namespace(
        {
            "id": f"/subscriptions/{SUB_A}/resourceGroups/rg-x/providers/Microsoft.ServiceBus/namespaces/sb-standard",
            "location": "West Europe",
            "sku": {"name": "Standard", "tier": "Standard"},
            "properties": {"provisioningState": "Succeeded"},
        }
    )

    async def listed() -> list[tuple[str | None, str | None, Encryption | None]]:
        async with servicebus(sandbox) as client:
            return [(n.name, n.sku.name if n.sku else None, n.encryption) async for n in client.namespaces.list()]

    assert asyncio.run(listed())[-1] == ("sb-standard", "Standard", None)


def test_vaults_are_listed_and_read_with_their_protection_flags(sandbox: Sandbox) -> None:
    """vaults.list_by_subscription and vaults.get answer the vault as getVault.json shapes it."""

    async def fetch() -> tuple[list[str | None], Any, Any]:
        async with keyvault_arm(sandbox) as client:
            listed = [v.name async for v in client.vaults.list_by_subscription(top=1)]
            return (
                listed,
                await client.vaults.get("rg-keyvaults", "kv-old"),
                await client.vaults.get("rg-keyvaults", "kv-prod"),
            )

    listed, old, prod = asyncio.run(fetch())
    assert listed == ["kv-prod", "kv-rbac", "kv-old", "kv-doomed"]
    assert old.properties.enable_soft_delete is True and old.properties.enable_purge_protection is None
    assert prod.properties.enable_purge_protection is True
    assert prod.properties.vault_uri == "https://kv-prod.vault.azure.net/"
    assert {(p.object_id, tuple(p.permissions["keys"])) for p in prod.properties.access_policies} == {
        (SB_PRINCIPAL, ("wrapKey", "unwrapKey", "get")),
        (USER_PRINCIPAL, ("wrapKey", "unwrapKey", "get")),
    }
    assert prod.id == sandbox.vault_resource_id(KV_PROD)


def test_a_vault_is_not_found_once_the_clock_passes_its_deletion(sandbox: Sandbox) -> None:
    """vaults.get answers the doomed vault before its delete_vault change and 404 ResourceNotFound after it."""

    async def fetch() -> Any:
        async with keyvault_arm(sandbox) as client:
            return await client.vaults.get("rg-keyvaults", "kv-doomed")

    assert asyncio.run(fetch()).name == "kv-doomed"
    sandbox.clock.advance(timedelta(hours=1))
    with pytest.raises(ResourceNotFoundError) as caught:
        asyncio.run(fetch())
    assert caught.value.error is not None and caught.value.error.code == "ResourceNotFound"


def test_access_policy_changes_show_as_the_clock_passes_them(sandbox: Sandbox) -> None:
    """A set_access change on a non-RBAC vault appears in its accessPolicies from its instant on."""

    async def policies() -> dict[str, list[str]]:
        async with keyvault_arm(sandbox) as client:
            vault: Any = await client.vaults.get("rg-keyvaults", "kv-prod")
            return {p.object_id: list(p.permissions["keys"]) for p in vault.properties.access_policies or []}

    assert "55555555-0000-0000-0000-0000000000ee" not in asyncio.run(policies())
    sandbox.clock.set(NOW + timedelta(hours=3))
    assert asyncio.run(policies())["55555555-0000-0000-0000-0000000000ee"] == ["get"]


def test_an_unknown_subscription_is_not_found(sandbox: Sandbox) -> None:
    """Listing namespaces of a subscription the sandbox does not know answers 404 SubscriptionNotFound."""
    status, _, body = asyncio.run(
        raw(sandbox, "GET", "/subscriptions/nope/providers/Microsoft.ServiceBus/namespaces?api-version=2026-01-01")
    )
    assert status == 404 and body["error"]["code"] == "SubscriptionNotFound"


def test_arm_asks_for_a_token(sandbox: Sandbox) -> None:
    """An ARM request without a bearer token answers 401 AuthenticationFailed."""
    status, headers, body = asyncio.run(raw(sandbox, "GET", "/subscriptions?api-version=2022-12-01", token=None))
    assert status == 401 and body["error"]["code"] == "AuthenticationFailed"
    assert "WWW-Authenticate" in headers


def _graph_query(sandbox: Sandbox, query: str, subscriptions: list[str], top: int) -> list[list[dict[str, Any]]]:
    """Every page of a Resource Graph query through the real ResourceGraphClient."""
    from azure.mgmt.resourcegraph.aio import ResourceGraphClient
    from azure.mgmt.resourcegraph.models import QueryRequest, QueryRequestOptions

    async def pages() -> list[list[dict[str, Any]]]:
        found: list[list[dict[str, Any]]] = []
        async with ResourceGraphClient(
            AsyncStaticTokenCredential(), base_url=sandbox.url, connection_verify=str(sandbox.ca_path)
        ) as client:
            token = None
            while True:
                response = await client.resources(
                    QueryRequest(
                        subscriptions=subscriptions,
                        query=query,
                        options=QueryRequestOptions(top=top, skip_token=token, result_format="objectArray"),
                    )
                )
                data: Any = response.data  # objectArray: a list of row objects
                found.append(list(data))
                token = response.skip_token
                if not token:
                    return found

    return asyncio.run(pages())


def test_resource_graph_answers_the_inventory_query_in_pages(sandbox: Sandbox) -> None:
    """The fleet query: namespaces of both subscriptions, filtered and projected, $skipToken paging."""
    from monitor.adapters.resourcegraph import NAMESPACE_QUERY

    pages = _graph_query(sandbox, NAMESPACE_QUERY, [SUB_A, SUB_B], top=2)
    rows = [row for page in pages for row in page]
    expected = sorted(n["name"] for n in sandbox.state.namespaces())
    assert sorted(row["name"] for row in rows) == expected and len(pages) == -(-len(expected) // 2)
    assert set(rows[0]) == {"id", "name", "type", "location", "subscriptionId", "sku", "identity", "tags", "properties"}
    only_b = _graph_query(sandbox, NAMESPACE_QUERY, [SUB_B], top=1000)
    assert {row["subscriptionId"] for page in only_b for row in page} == {SUB_B}


def test_resource_graph_refuses_what_the_sandbox_does_not_understand(sandbox: Sandbox) -> None:
    """An unsupported query is a 400 naming the part, never a silently wrong answer."""
    from azure.core.exceptions import HttpResponseError

    with pytest.raises(HttpResponseError) as refused:
        _graph_query(sandbox, "resources | summarize count() by type", [SUB_A], top=10)
    assert refused.value.status_code == 400 and "summarize count() by type" in str(refused.value)


def test_resource_graph_pages_come_from_the_first_pages_result_set(sandbox: Sandbox) -> None:
    """A namespace created while a query is paged through is not in that query's later pages (Resource Graph
    pages a result set, not the query evaluated again); an unknown $skipToken is a 400."""
    from azure.core.exceptions import HttpResponseError
    from azure.mgmt.resourcegraph.aio import ResourceGraphClient
    from azure.mgmt.resourcegraph.models import QueryRequest, QueryRequestOptions

    from monitor.adapters.resourcegraph import NAMESPACE_QUERY

    expected = sorted(n["name"] for n in sandbox.state.namespaces())
    template = next(n for n in sandbox.state.namespaces() if n["name"] == expected[0])

    async def query() -> tuple[list[str], str]:
        async with ResourceGraphClient(
            AsyncStaticTokenCredential(), base_url=sandbox.url, connection_verify=str(sandbox.ca_path)
        ) as client:

            async def page(token: str | None) -> Any:
                options = QueryRequestOptions(top=1, skip_token=token, result_format="objectArray")
                return await client.resources(
                    QueryRequest(subscriptions=[SUB_A, SUB_B], query=NAMESPACE_QUERY, options=options)
                )

            first = await page(None)
            names = [row["name"] for row in first.data]
            sandbox.state.put_namespace({**template, "id": template["id"] + "-added", "name": "sb-added"})
            token = first.skip_token
            while token:
                response = await page(token)
                names += [row["name"] for row in response.data]
                token = response.skip_token
            with pytest.raises(HttpResponseError) as refused:
                await page(first.skip_token.replace(first.skip_token[:4], "AAAA", 1))
            return names, str(refused.value.status_code)

    names, refused = asyncio.run(query())
    assert sorted(names) == expected and refused == "400"


def test_resource_graph_answers_with_the_user_quota_and_refuses_past_it(sandbox: Sandbox) -> None:
    """Every answer carries x-ms-user-quota-remaining and x-ms-user-quota-resets-after (hh:mm:ss); the 16th
    query inside one 5-second window is a 429 RateLimiting, as Resource Graph throttles a user."""
    from azure.core.rest import HttpRequest
    from azure.mgmt.resourcegraph.aio import ResourceGraphClient

    from monitor.adapters.resourcegraph import API_VERSION, NAMESPACE_QUERY, QUERY_PATH

    async def queries() -> list[tuple[int, str | None, str | None, str]]:
        answers = []
        async with ResourceGraphClient(
            AsyncStaticTokenCredential(), base_url=sandbox.url, connection_verify=str(sandbox.ca_path), retry_total=0
        ) as client:
            body = {"subscriptions": [SUB_A], "query": NAMESPACE_QUERY, "options": {"$top": 10}}
            for _ in range(16):
                request = HttpRequest("POST", QUERY_PATH, params={"api-version": API_VERSION}, json=body)
                response = await client._send_request(request)
                await response.read()
                code = response.json().get("error", {}).get("code", "") if response.status_code != 200 else ""
                headers = response.headers
                answers.append(
                    (
                        response.status_code,
                        headers.get("x-ms-user-quota-remaining"),
                        headers.get("x-ms-user-quota-resets-after"),
                        code,
                    )
                )
        return answers

    answers = asyncio.run(queries())
    assert [a[0] for a in answers] == [200] * 15 + [429]
    assert [a[1] for a in answers] == [str(n) for n in range(14, -1, -1)] + ["0"]
    assert all(re.fullmatch(r"00:00:0[0-5]", a[2] or "") for a in answers)
    assert answers[-1][3] == "RateLimiting"

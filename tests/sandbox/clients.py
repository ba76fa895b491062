"""The real async Azure SDK clients (and a raw HTTPS client) pointed at a running Sandbox."""

from __future__ import annotations

from typing import Any

import aiohttp
from azure.keyvault.keys.aio import KeyClient
from azure.mgmt.authorization.aio import AuthorizationManagementClient
from azure.mgmt.keyvault.aio import KeyVaultManagementClient
from azure.mgmt.servicebus.aio import ServiceBusManagementClient

from monitor.sandbox import AsyncStaticTokenCredential, Sandbox
from tests.sandbox.world import KV_PROD, SUB_A


def key_client(sandbox: Sandbox, vault: str = KV_PROD, **options: Any) -> KeyClient:
    """A KeyClient for `vault` exactly as an adapter would build one against the sandbox."""
    return KeyClient(
        sandbox.keyvault_url(vault),
        AsyncStaticTokenCredential(),
        verify_challenge_resource=False,
        connection_verify=str(sandbox.ca_path),
        **options,
    )


def servicebus(sandbox: Sandbox, subscription: str = SUB_A, **options: Any) -> ServiceBusManagementClient:
    return ServiceBusManagementClient(
        AsyncStaticTokenCredential(),
        subscription,
        base_url=sandbox.url,
        connection_verify=str(sandbox.ca_path),
        **options,
    )


def keyvault_arm(sandbox: Sandbox, subscription: str = SUB_A, **options: Any) -> KeyVaultManagementClient:
    return KeyVaultManagementClient(
        AsyncStaticTokenCredential(),
        subscription,
        base_url=sandbox.url,
        connection_verify=str(sandbox.ca_path),
        **options,
    )


def authorization(sandbox: Sandbox, subscription: str = SUB_A, **options: Any) -> AuthorizationManagementClient:
    return AuthorizationManagementClient(
        AsyncStaticTokenCredential(),
        subscription,
        base_url=sandbox.url,
        connection_verify=str(sandbox.ca_path),
        **options,
    )


async def raw(
    sandbox: Sandbox, method: str, path: str, *, token: str | None = "sandbox", json_body: Any = None
) -> tuple[int, dict[str, str], Any]:
    """One request with no SDK in between: (status, headers, parsed JSON or None)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, sandbox.url + path, headers=headers, json=json_body, ssl=sandbox.client_ssl_context()
        ) as response,
    ):
        text = await response.text()
        return response.status, dict(response.headers), (None if not text else await response.json(content_type=None))

"""Composition root: credentials, SDK clients and adapters, built once from Settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from azure.core.credentials_async import AsyncTokenCredential

from monitor.adapters.access import VaultAccess
from monitor.adapters.azure_clients import AzureClients, AzureOptions
from monitor.adapters.keyvault import KeyVaultKeys
from monitor.adapters.servicebus import ServiceBusInventory
from monitor.config import Settings
from monitor.service import Readers


def azure_options(settings: Settings) -> AzureOptions:
    """Endpoints, trust and patience for every Azure client."""
    return AzureOptions(
        arm_endpoint=settings.arm_endpoint,
        keyvault_endpoint=settings.keyvault_endpoint,
        ca_bundle=settings.ca_bundle,
        retries=settings.http_retries,
        timeout_seconds=settings.http_timeout_seconds,
    )


def build_credential(settings: Settings) -> AsyncTokenCredential:
    """A static token for a local stand-in, else DefaultAzureCredential (managed identity, az login, ...)."""
    if settings.static_token:
        from monitor.credentials import AsyncStaticTokenCredential

        return AsyncStaticTokenCredential(settings.static_token)
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential()


@asynccontextmanager
async def azure_readers(
    settings: Settings, *, credential: AsyncTokenCredential | None = None
) -> AsyncIterator[Readers]:
    """The Azure readers for one run; clients (and a credential built here) are closed on exit."""
    own_credential = credential is None
    active = credential if credential is not None else build_credential(settings)
    clients = AzureClients(active, azure_options(settings))
    try:
        yield Readers(
            inventory=ServiceBusInventory(clients),
            keys=KeyVaultKeys(clients),
            access=VaultAccess(clients),
        )
    finally:
        await clients.close()
        if own_credential:
            await active.close()

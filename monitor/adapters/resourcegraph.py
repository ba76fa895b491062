"""The fleet's namespaces from Azure Resource Graph: one paged query across every subscription, instead of one
ARM listing per subscription; ARM listing when Resource Graph is not permitted or fails."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError
from azure.core.rest import HttpRequest
from azure.mgmt.resourcegraph.aio import ResourceGraphClient

from monitor.adapters.azure_clients import AzureClients, describe_failure, json_body
from monitor.adapters.servicebus import ServiceBusInventory, namespace_from_document
from monitor.app.ports import FleetListing, PageCallback
from monitor.domain.errors import ReadError
from monitor.domain.model import Namespace, name_id

log = logging.getLogger("keyhealth.inventory")

# Service Bus and Event Hubs namespaces whose keys come from Key Vault, with what namespace_from_document reads.
# The sku rule (Premium; for Event Hubs also a Dedicated cluster's, whatever its sku) is applied client-side by
# namespace_from_document, as is the key source, so a looser answer cannot add a namespace that is not CMK.
NAMESPACE_QUERY = (
    "resources"
    " | where type in~ ('microsoft.servicebus/namespaces', 'microsoft.eventhub/namespaces')"
    " | where properties.encryption.keySource =~ 'Microsoft.KeyVault'"
    " | project id, name, type, location, subscriptionId, sku, identity, tags, properties"
)
PAGE_SIZE = 1000  # Resource Graph's largest page
QUERY_PATH = "/providers/Microsoft.ResourceGraph/resources"
API_VERSION = "2021-03-01"  # the stable version the SDK client speaks
# Resource Graph takes at most this many subscriptions in one request.
SUBSCRIPTIONS_PER_QUERY = 1000


def _denied(error: AzureError) -> bool:
    return isinstance(error, HttpResponseError) and error.status_code in {401, 403}


class ResourceGraphInventory:
    """InventoryReader: Resource Graph first, ARM listing per subscription as the fallback.

    Resource Graph answers only for subscriptions the identity can read and says nothing of the others,
    so the subscriptions are first checked against those ARM lists as visible: a requested one that is
    not visible is reported blind rather than silently empty.
    """

    def __init__(self, clients: AzureClients, arm: ServiceBusInventory | None = None) -> None:
        self._clients = clients
        self._arm = arm or ServiceBusInventory(clients)
        self._denied = False  # once Resource Graph refused the identity, stop asking (logged once)

    async def list_subscriptions(self) -> list[str]:
        return await self._arm.list_subscriptions()

    async def list_namespaces(self, subscription: str) -> list[Namespace]:
        return await self._arm.list_namespaces(subscription)

    async def list_namespaces_in(
        self, subscriptions: Sequence[str], *, on_page: PageCallback | None = None
    ) -> FleetListing:
        if self._denied or not subscriptions:
            return await self._arm.list_namespaces_in(subscriptions, on_page=on_page)
        try:
            visible = {name_id(s) for s in await self._arm.list_subscriptions()}
        except ReadError:
            return await self._arm.list_namespaces_in(subscriptions, on_page=on_page)
        readable = [s for s in subscriptions if name_id(s) in visible]
        blind = {
            s: f"subscription {s} is not visible to the monitor's identity: give it Reader there"
            for s in subscriptions
            if name_id(s) not in visible
        }
        try:
            namespaces = await self._query(readable, on_page)
        except AzureError as error:
            if _denied(error):
                self._denied = True
                log.warning(
                    "Resource Graph refused the monitor (%s); listing namespaces per subscription over ARM from now on",
                    describe_failure(error),
                )
            else:
                log.warning("Resource Graph query failed (%s); listing over ARM this time", describe_failure(error))
            return await self._arm.list_namespaces_in(subscriptions, on_page=on_page)
        return FleetListing(namespaces=namespaces, blind=blind, source="resource-graph")

    async def _query(self, subscriptions: Sequence[str], on_page: PageCallback | None = None) -> list[Namespace]:
        """The namespaces of every row, page by page. Each page is asked for before the one before it is
        turned into namespaces, so that work overlaps the wait."""
        client = self._graph()
        namespaces: list[Namespace] = []
        for first in range(0, len(subscriptions), SUBSCRIPTIONS_PER_QUERY):
            body = {
                "subscriptions": list(subscriptions[first : first + SUBSCRIPTIONS_PER_QUERY]),
                "query": NAMESPACE_QUERY,
            }
            options: dict[str, Any] = {"$top": PAGE_SIZE, "resultFormat": "objectArray"}
            pending: asyncio.Future[tuple[list[dict[str, Any]], str | None]] | None = asyncio.ensure_future(
                _page(client, {**body, "options": options})
            )
            try:
                while pending is not None:
                    rows, token = await pending
                    pending = None
                    if token:
                        options = {**options, "$skipToken": token}
                        pending = asyncio.ensure_future(_page(client, {**body, "options": options}))
                    page = [n for row in rows if (n := namespace_from_document(row)) is not None]
                    namespaces.extend(page)
                    if on_page is not None and page:
                        on_page(page)
            finally:
                if pending is not None:
                    pending.cancel()
        return namespaces

    def _graph(self) -> ResourceGraphClient:
        return self._clients.resource_graph()


async def _page(client: ResourceGraphClient, body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the query: its rows and the skip token to the next (None after the last). Sent raw through
    the SDK client's pipeline (auth, retries, telemetry): its model would turn each row into objects only to be
    turned back (a second per 10,000 rows). Raises AzureError."""
    request = HttpRequest("POST", QUERY_PATH, params={"api-version": API_VERSION}, json=dict(body))
    # The generator's raw-request entry point (this client's name for send_request). Streamed: the pipeline's
    # content policy would decode the 2 MB page as well, only for the text to be decoded again here.
    response = await client._send_request(request, stream=True)
    await response.read()
    response.raise_for_status()
    page = json_body(response, "Resource Graph page")
    data = page.get("data") if isinstance(page, dict) else None
    rows = [row for row in data if isinstance(row, dict)] if isinstance(data, list) else []
    token = page.get("$skipToken") if isinstance(page, dict) else None
    return rows, token if isinstance(token, str) and token else None

"""The plumbing of the Table Storage store: clients per table (created when missing), point reads,
queries and bounded concurrency; how to open it (a connection string or an identity)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterable
from datetime import datetime
from typing import Any, Self

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableEntity
from azure.data.tables.aio import TableClient, TableServiceClient

from monitor.adapters.azure_clients import EnvironmentProxyTransport
from monitor.adapters.tables.codec import _PREFIX, _TABLES, T, _failures, _public_url
from monitor.domain.model import KeyId


class TableBase:
    """What every part of TableStateStore uses: the service client, a client per table, bounded concurrency."""

    def __init__(self, service: TableServiceClient, *, table_prefix: str = "keyhealth", concurrency: int = 16) -> None:
        if not _PREFIX.match(table_prefix):
            raise ValueError(f"table_prefix must be a letter then up to 40 letters or digits, got {table_prefix!r}")
        self._service = service
        self._prefix = table_prefix
        self._semaphore = asyncio.Semaphore(concurrency)
        self._clients: dict[str, TableClient] = {}
        self._ready = False
        self._ready_lock = asyncio.Lock()
        # Shared budgets (tables/coordination.py): by scope partition, the window this instance last wrote
        # (row, ETag, units granted), and when it last forgot a scope's old windows.
        self._budget_rows: dict[str, tuple[str, str, int]] = {}
        self._budgets_forgotten: dict[str, datetime] = {}
        # Namespaces whose index entries index_new_namespaces wrote, by namespace key: their keys then.
        self._indexed_ahead: dict[str, frozenset[KeyId]] = {}
        # The key index's changes waiting by vault partition, the task writing each partition's rounds, and the
        # requests those rounds may have in flight (tables/key_users.py).
        self._index_pending: dict[str, Any] = {}
        self._index_rounds: dict[str, asyncio.Future[None]] = {}
        self._index_slots = asyncio.Semaphore(concurrency)

    @classmethod
    def from_connection_string(
        cls, connection_string: str, *, table_prefix: str = "keyhealth", concurrency: int = 16, **client_kwargs: Any
    ) -> Self:
        """A store reached by a connection string (Azurite, or an account key). The string is never kept or shown."""
        client_kwargs.setdefault("transport", EnvironmentProxyTransport())
        service = TableServiceClient.from_connection_string(connection_string, **client_kwargs)
        return cls(service, table_prefix=table_prefix, concurrency=concurrency)

    @classmethod
    def from_endpoint(
        cls,
        endpoint: str,
        credential: AsyncTokenCredential,
        *,
        table_prefix: str = "keyhealth",
        concurrency: int = 16,
        **client_kwargs: Any,
    ) -> Self:
        """A store reached with an identity (managed identity in Azure): needs *Storage Table Data Contributor*."""
        client_kwargs.setdefault("transport", EnvironmentProxyTransport())
        service = TableServiceClient(endpoint, credential=credential, **client_kwargs)
        return cls(service, table_prefix=table_prefix, concurrency=concurrency)

    def __repr__(self) -> str:
        # Never the credential or connection string: only where the tables are.
        return f"TableStateStore(endpoint={_public_url(self._service.url)!r}, table_prefix={self._prefix!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        # Index rounds under way finish first: a round abandoned half-way would leave its callers' work undone.
        await asyncio.gather(*self._index_rounds.values(), return_exceptions=True)
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        await self._service.close()

    # -- plumbing

    def table_name(self, table: str) -> str:
        """The Azure table that holds `table` (one of the names in this module's docstring)."""
        return f"{self._prefix}{table}"

    async def _table(self, table: str) -> TableClient:
        if not self._ready:
            async with self._ready_lock:
                if not self._ready:
                    with _failures("create tables"):
                        await asyncio.gather(
                            *(self._service.create_table_if_not_exists(self.table_name(t)) for t in _TABLES)
                        )
                    self._ready = True
        client = self._clients.get(table)
        if client is None:
            client = self._clients[table] = self._service.get_table_client(self.table_name(table))
        return client

    async def _get(self, table: str, partition: str, row: str, *, what: str) -> TableEntity | None:
        client = await self._table(table)
        with _failures(what):
            try:
                return await client.get_entity(partition, row)
            except ResourceNotFoundError:
                return None

    async def _query(self, table: str, query: str, *, what: str, **parameters: Any) -> list[TableEntity]:
        client = await self._table(table)
        with _failures(what):
            return [entity async for entity in client.query_entities(query, parameters=parameters)]

    async def _bounded(self, work: Awaitable[T]) -> T:
        async with self._semaphore:
            return await work

    async def _gather(self, works: Iterable[Awaitable[T]]) -> list[T]:
        """Run `works` at most `concurrency` at a time. Only at the top of a call: a bounded work that
        waited on bounded works could deadlock once every slot held a waiter."""
        return list(await asyncio.gather(*(self._bounded(w) for w in works)))

    # -- for tests and tools

    async def entities(self, table: str) -> AsyncIterator[TableEntity]:
        """Every entity of one of the store's tables, as stored (for tests and diagnostics)."""
        client = await self._table(table)
        with _failures(f"list {table}"):
            async for entity in client.list_entities():
                yield entity

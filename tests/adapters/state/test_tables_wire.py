"""Entity-group transactions in Table Storage's `$batch` wire format (monitor/adapters/tables/wire.py),
against a real Azurite: what the SDK's own transactions do, all or nothing, and refusals said as they are."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from monitor.adapters.tables import wire
from monitor.adapters.tables.wire import TransactionRefusedError, batch_body, part_statuses
from tests.adapters.state.support import Azurite

T = datetime(2026, 11, 22, 8, 30, tzinfo=UTC)


def _with_table(azurite: Azurite, work: Callable[[TableClient], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        async with TableServiceClient.from_connection_string(azurite.connection_string) as service:
            name = f"t{uuid.uuid4().hex[:16]}"
            await service.create_table(name)
            async with service.get_table_client(name) as client:
                return await work(client)

    return asyncio.run(run())


def test_creates_updates_and_upserts_land_as_the_sdk_would_write_them(azurite: Azurite):
    """Strings, numbers, booleans, times and bytes keep their types; a quote in a key is escaped. Strings go
    untyped (Edm.String is JSON's default): ones that read as a number or a time stay strings."""

    async def work(client: TableClient) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        existing = await client.create_entity({"PartitionKey": "p", "RowKey": "o'brien", "N": 1})
        await wire.submit(
            client,
            [
                (
                    "create",
                    {
                        "PartitionKey": "p",
                        "RowKey": "new",
                        "S": "text é",
                        "Digits": "12",
                        "When": "2026-11-22T08:30:00Z",
                        "B": b"\x00\xff",
                        "At": T,
                    },
                    None,
                ),
                ("update", {"PartitionKey": "p", "RowKey": "o'brien", "N": 2, "Flag": True}, existing["etag"]),
                ("upsert", {"PartitionKey": "p", "RowKey": "up", "N": 7}, None),
            ],
        )
        return (
            dict(await client.get_entity("p", "new")),
            dict(await client.get_entity("p", "o'brien")),
            dict(await client.get_entity("p", "up")),
        )

    created, updated, upserted = _with_table(azurite, work)
    assert created["S"] == "text é" and created["Digits"] == "12" and created["When"] == "2026-11-22T08:30:00Z"
    assert created["B"] == b"\x00\xff" and created["At"] == T
    assert updated["N"] == 2 and updated["Flag"] is True
    assert upserted["N"] == 7


@pytest.mark.parametrize("conflict", ["create of an existing entity", "update at a stale ETag"])
def test_a_refused_operation_refuses_the_whole_transaction(azurite: Azurite, conflict: str):
    async def work(client: TableClient) -> tuple[TransactionRefusedError, bool]:
        first = await client.create_entity({"PartitionKey": "p", "RowKey": "a", "N": 1})
        await client.update_entity(
            {"PartitionKey": "p", "RowKey": "a", "N": 2},
            mode=UpdateMode.REPLACE,
            etag=first["etag"],
            match_condition=MatchConditions.IfNotModified,
        )
        refused: wire.Operation = (
            ("create", {"PartitionKey": "p", "RowKey": "a", "N": 3}, None)
            if conflict.startswith("create")
            else ("update", {"PartitionKey": "p", "RowKey": "a", "N": 3}, first["etag"])
        )
        with pytest.raises(TransactionRefusedError) as raised:
            await wire.submit(client, [("create", {"PartitionKey": "p", "RowKey": "b"}, None), refused])
        try:
            await client.get_entity("p", "b")
        except ResourceNotFoundError:
            applied = False
        else:
            applied = True
        return raised.value, applied

    error, applied = _with_table(azurite, work)
    assert error.status == (409 if conflict.startswith("create") else 412)
    assert error.index == 1
    assert not applied  # all or nothing: the first operation was not applied either


def test_the_body_is_a_changeset_of_one_request_per_entity():
    boundary, body = batch_body(
        "https://acct.table.core.windows.net/ns",
        [
            ("create", {"PartitionKey": "p", "RowKey": "a"}, None),
            ("update", {"PartitionKey": "p", "RowKey": "b/c"}, "W/\"datetime'x'\""),
            ("upsert", {"PartitionKey": "p", "RowKey": "d"}, None),
        ],
    )
    text = body.decode()
    assert (
        boundary.startswith("batch_") and text.startswith(f"--{boundary}\r\n") and text.endswith(f"--{boundary}--\r\n")
    )
    assert "POST https://acct.table.core.windows.net/ns HTTP/1.1" in text
    assert "PUT https://acct.table.core.windows.net/ns(PartitionKey='p',RowKey='b%2Fc') HTTP/1.1" in text
    assert text.count("If-Match: ") == 1 and "Prefer: return-no-content" in text
    assert [line for line in text.split("\r\n") if line.startswith("Content-ID: ")] == [
        "Content-ID: 0",
        "Content-ID: 1",
        "Content-ID: 2",
    ]


def test_part_statuses_reads_each_answer_in_order():
    body = b"--x\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 201 Created\r\n\r\n--x\r\n\r\n"
    body += b"HTTP/1.1 204 No Content\r\n"
    assert part_statuses(body) == [201, 204]


def test_a_query_reads_every_page_and_each_entity_s_etag(azurite: Azurite):
    """Azurite answers 1,000 entities a page: 1,050 come back whole, each with the ETag a conditional write
    takes; a quote in a filter literal is escaped; a property that is not a string is left out."""

    async def work(client: TableClient) -> tuple[int, set[str], list[tuple[dict[str, str], str]]]:
        entities = [{"PartitionKey": "p", "RowKey": f"r{n:04d}", "S": f"s{n}", "N": n} for n in range(1050)]
        for start in range(0, len(entities), 100):
            await wire.submit(client, [("create", e, None) for e in entities[start : start + 100]])
        await client.create_entity({"PartitionKey": "q", "RowKey": "o'brien", "S": "quoted"})
        pages = [page async for page in wire.query_strings(client, "PartitionKey eq 'p'", ["S", "N"])]
        everything = [entity for page in pages for entity in page]
        row = wire.literal("o'brien")
        quoted = [
            entity
            async for page in wire.query_strings(client, f"PartitionKey eq 'q' and RowKey eq {row}", ["S"])
            for entity in page
        ]
        first_etag = everything[0][1]
        await client.update_entity(
            {"PartitionKey": "p", "RowKey": "r0000", "S": "changed"},
            mode=UpdateMode.REPLACE,
            etag=first_etag,
            match_condition=MatchConditions.IfNotModified,
        )
        return len(pages), {values["S"] for values, _ in everything if "N" not in values}, quoted

    pages, strings, quoted = _with_table(azurite, work)
    assert pages == 2
    assert len(strings) == 1050
    assert [values for values, _ in quoted] == [{"S": "quoted"}]


def test_a_transaction_over_the_request_size_limit_is_refused_whole(azurite: Azurite):
    """Table Storage takes at most 4 MiB a transaction: more is refused (413) like a refused operation, so the
    store writes those entities one by one instead; nothing of it is applied."""

    async def work(client: TableClient) -> tuple[TransactionRefusedError, list[Any]]:
        operations: list[wire.Operation] = [
            ("create", {"PartitionKey": "p", "RowKey": f"r{n}", "B": b"x" * 60_000}, None) for n in range(100)
        ]
        with pytest.raises(TransactionRefusedError) as raised:
            await wire.submit(client, operations)
        return raised.value, [entity async for entity in client.list_entities()]

    error, stored = _with_table(azurite, work)
    assert error.status == 413 and error.index is None
    assert stored == []

"""What the Table store adds to the contract, against a real Azurite: entity layout, limits, cleanup, secrets."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from azure.data.tables import TableEntity, UpdateMode
from azure.data.tables.aio import TableServiceClient

from monitor.adapters.state_tables import TableStateStore
from monitor.adapters.tables import codec, snapshot
from monitor.app.state import Incident
from monitor.domain.errors import StateStoreError
from tests.adapters.state.support import (
    AZURITE_KEY,
    T0,
    Azurite,
    free_port,
    large_scenario_document,
    state,
)

KV = "https://kv-payments.vault.azure.net"
MINUTE = timedelta(minutes=1)
FORBIDDEN_IN_KEYS = set("/\\#?") | {chr(c) for c in range(0x20)} | {chr(c) for c in range(0x7F, 0xA0)}


@asynccontextmanager
async def opened(azurite: Azurite, prefix: str) -> AsyncIterator[TableStateStore]:
    async with TableStateStore.from_connection_string(azurite.connection_string, table_prefix=prefix) as store:
        yield store


async def rows(store: TableStateStore, table: str) -> list[dict[str, object]]:
    return [dict(entity) async for entity in store.entities(table)]


def test_the_store_creates_its_tables_when_missing(azurite: Azurite, prefix: str):
    """The first call on a fresh prefix creates the store's tables, named prefix + purpose."""

    async def scenario() -> set[str]:
        async with opened(azurite, prefix) as store:
            await store.get_lease("poll")
        async with TableServiceClient.from_connection_string(azurite.connection_string) as service:
            return {t.name async for t in service.list_tables() if t.name.startswith(prefix)}

    assert asyncio.run(scenario()) == {
        f"{prefix}{t}"
        for t in (
            "namespaces",
            "keyusers",
            "snapshot",
            "events",
            "incidents",
            "leases",
            "marks",
            "budgets",
            "keyrecords",
        )
    }


def test_a_large_snapshot_is_split_into_entities_within_azure_limits(azurite: Azurite, prefix: str):
    """A 10,000-namespace snapshot spans several chunk entities, each property under 64 KiB, each entity under 1 MiB."""
    document = large_scenario_document()

    async def scenario() -> list[dict[str, object]]:
        async with opened(azurite, prefix) as store:
            await store.put_snapshot(document, taken_at=T0)
            return await rows(store, "snapshot")

    entities = asyncio.run(scenario())
    chunks = [e for e in entities if e["RowKey"] != "head"]
    assert len(chunks) >= 2
    for chunk in chunks:
        pieces = [value for name, value in chunk.items() if name.startswith("D")]
        assert all(isinstance(p, bytes) and len(p) <= 64 * 1024 for p in pieces)
        assert sum(len(p) for p in pieces if isinstance(p, bytes)) < 1024 * 1024 - 64 * 1024
    head = next(e for e in entities if e["RowKey"] == "head")
    assert head["Chunks"] == len(chunks)


def test_replacing_a_snapshot_removes_the_old_chunks_and_orphans(azurite: Azurite, prefix: str):
    """After a newer snapshot is stored only its head and chunks remain: the replaced and a dead writer's are gone."""

    async def scenario() -> list[dict[str, object]]:
        async with opened(azurite, prefix) as store:
            await store.put_snapshot(large_scenario_document(namespaces=5_000), taken_at=T0)
            client = TableServiceClient.from_connection_string(azurite.connection_string)
            async with client, client.get_table_client(store.table_name("snapshot")) as table:
                # What a writer that died before flipping the head leaves behind.
                await table.upsert_entity(
                    {"PartitionKey": "snapshot", "RowKey": "deadbeef-00000", "TakenAt": T0, "D00": b"x"},
                    mode=UpdateMode.REPLACE,
                )
            await store.put_snapshot({"n": 2}, taken_at=T0 + timedelta(minutes=5))
            return await rows(store, "snapshot")

    entities = asyncio.run(scenario())
    head = next(e for e in entities if e["RowKey"] == "head")
    assert sorted(str(e["RowKey"]) for e in entities) == sorted(["head", f"{head['Generation']}-00000"])


def test_readers_never_see_a_half_replaced_snapshot(azurite: Azurite, prefix: str, monkeypatch: pytest.MonkeyPatch):
    """While one instance keeps replacing a many-chunk snapshot, another only ever reads whole documents it wrote."""
    for module in (codec, snapshot):  # small pieces: a small document spans many chunk entities
        monkeypatch.setattr(module, "_PIECE", 512)
    documents = [{"version": n, "padding": [f"{n}-{i}-{i * n:x}" for i in range(2_000)]} for n in range(4)]

    async def scenario() -> list[object]:
        async with opened(azurite, prefix) as writer, opened(azurite, prefix) as reader:
            await writer.put_snapshot(documents[0], taken_at=T0)

            async def write() -> None:
                for n, document in enumerate(documents[1:], start=1):
                    await writer.put_snapshot(document, taken_at=T0 + timedelta(minutes=n))

            async def read() -> list[object]:
                seen: list[object] = []
                for _ in range(12):
                    stored = await reader.get_snapshot()
                    assert stored is not None
                    seen.append(stored.document)
                return seen

            _, seen = await asyncio.gather(write(), read())
            return seen

    for document in asyncio.run(scenario()):
        assert document in documents


def test_a_reader_whose_snapshot_is_replaced_mid_read_follows_the_new_head(
    azurite: Azurite, prefix: str, monkeypatch: pytest.MonkeyPatch
):
    """When the chunks a reader was about to read are replaced and removed, it reads the new snapshot instead."""
    for module in (codec, snapshot):
        monkeypatch.setattr(module, "_PIECE", 512)
    old = {"version": 1, "padding": [f"old-{i}" for i in range(3_000)]}
    new = {"version": 2, "padding": [f"new-{i}" for i in range(3_000)]}

    async def scenario() -> object:
        async with opened(azurite, prefix) as writer, opened(azurite, prefix) as reader:
            await writer.put_snapshot(old, taken_at=T0)
            query = reader._query
            replaced = False

            async def replace_first(table: str, text: str, **kwargs: Any) -> list[TableEntity]:
                nonlocal replaced
                if not replaced:  # between the reader's head read and its chunk read
                    replaced = True
                    await writer.put_snapshot(new, taken_at=T0 + timedelta(minutes=5))
                return await query(table, text, **kwargs)

            monkeypatch.setattr(reader, "_query", replace_first)
            stored = await reader.get_snapshot()
            assert replaced and stored is not None
            return stored.document

    assert asyncio.run(scenario()) == new


def test_keys_hold_no_character_azure_forbids(azurite: Azurite, prefix: str):
    """ARM ids, key names, event ids and conditions full of '/', '#' and '?' never reach a PartitionKey or RowKey."""
    weird = state("sb-a#1?x", ("https://kv.vault.azure.net/", "key/with#odd?chars"))

    async def scenario() -> list[dict[str, object]]:
        async with opened(azurite, prefix) as store:
            await store.put_namespace_states([weird])
            await store.mark_event_processed("evt/1#2?3\\4", at=T0)
            await store.put_incident(Incident(namespace_id=weird.id, condition="key/with#odd?chars", body={}))
            await store.acquire_lease("poll/#?", "A", timedelta(minutes=1), now=T0)
            await store.put_snapshot({"n": 1}, taken_at=T0)
            assert await store.namespaces_for_key("https://kv.vault.azure.net", "KEY/with#odd?chars") == [weird.id]
            everything = []
            for table in ("namespaces", "keyusers", "snapshot", "events", "incidents", "leases"):
                everything += await rows(store, table)
            return everything

    entities = asyncio.run(scenario())
    assert len(entities) == 7
    for entity in entities:
        for key in (str(entity["PartitionKey"]), str(entity["RowKey"])):
            assert not FORBIDDEN_IN_KEYS & set(key) and len(key) <= 1024


def test_an_interrupted_index_update_is_hidden_then_cleaned_up(azurite: Azurite, prefix: str):
    """An index entry a dead writer left behind (no longer listed) is never answered, and the next write removes it."""
    current = state("sb-a", (KV, "kept"))

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        async with opened(azurite, prefix) as store:
            await store.put_namespace_states([current])
            # Leave what a writer that died mid-way would: an entry for "dropped", recorded in IndexedKeyIds.
            client = TableServiceClient.from_connection_string(azurite.connection_string)
            async with client, client.get_table_client(store.table_name("namespaces")) as table:
                entity = next(iter(await rows(store, "namespaces")))
                entity["IndexedKeyIds"] = json.dumps([[KV, "dropped"], [KV, "kept"]])
                await table.upsert_entity(entity, mode=UpdateMode.REPLACE)
            await store._change_index([((KV, "dropped"), current.id, True)])
            left = sorted(key_id[1] for key_id, _ in await store.index_entries())
            answered = await store.namespaces_for_key(KV, "dropped")
            await store.put_namespace_states([current])
            return left, answered, sorted(key_id[1] for key_id, _ in await store.index_entries())

    assert asyncio.run(scenario()) == (["dropped", "kept"], [], ["kept"])


def test_repr_and_failures_never_show_the_account_key(prefix: str):
    """The store's repr and the StateStoreError of an unreachable account name the endpoint, never the key."""
    port = free_port()  # nothing listens there
    connection_string = (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
        f"TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    )

    async def scenario() -> tuple[str, StateStoreError]:
        async with TableStateStore.from_connection_string(
            connection_string, table_prefix=prefix, retry_total=0
        ) as store:
            try:
                await store.get_lease("poll")
            except StateStoreError as error:
                return repr(store), error
            raise AssertionError("an unreachable account must raise StateStoreError")

    shown, error = asyncio.run(scenario())
    assert shown == f"TableStateStore(endpoint='http://127.0.0.1:{port}/devstoreaccount1', table_prefix='{prefix}')"
    for text in (shown, str(error), repr(error)):
        assert AZURITE_KEY not in text and AZURITE_KEY[:20] not in text
    assert "could not connect" in error.reason


def test_a_table_prefix_azure_would_reject_is_refused():
    """A prefix that would make an invalid table name raises ValueError before any request."""
    with pytest.raises(ValueError, match="table_prefix"):
        TableStateStore.from_connection_string(
            "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=a2V5;TableEndpoint=http://127.0.0.1:1/a;",
            table_prefix="key-health",
        )


def test_new_namespaces_are_indexed_ahead_and_their_states_then_add_no_entries(
    azurite: Azurite, prefix: str, monkeypatch: pytest.MonkeyPatch
):
    """index_new_namespaces writes the entries before any state (a writer that dies next leaves entries, never a
    state without them); the states' first write then sends no index transaction of its own."""
    states = [state(f"sb-{n}", (KV, "shared"), (KV, f"own-{n}")) for n in range(3)]

    async def scenario() -> tuple[int, int, list[int], list[str]]:
        async with opened(azurite, prefix) as store:
            await store.index_new_namespaces([(s.id, s.key_ids) for s in states])
            ahead = len(await store.index_entries())
            stored_ahead = len(await rows(store, "namespaces"))
            indexed: list[int] = []
            change_index = store._change_index

            async def counting(changes: Any) -> None:
                listed = list(changes)
                indexed.append(len(listed))
                await change_index(listed)

            monkeypatch.setattr(store, "_change_index", counting)
            await store.put_namespace_states(states, previous={})
            return ahead, stored_ahead, indexed, await store.namespaces_for_key(KV, "shared")

    ahead, stored_ahead, indexed, found = asyncio.run(scenario())
    assert (ahead, stored_ahead) == (6, 0)
    assert indexed == [0]  # called with nothing left to index
    assert found == sorted((s.id for s in states), key=str.lower)


def test_concurrent_writers_leave_every_listed_key_in_the_raw_index(azurite: Azurite, prefix: str):
    """Three instances rewriting namespaces with shifting keys at once leave an index entry for every key listed."""
    rng = random.Random(3)
    rounds = [
        [
            state(
                f"sb-{n}",
                *[(KV, f"k{rng.randrange(4)}") for _ in range(rng.randrange(3))],
                evaluated_at=T0 + r * MINUTE // 2,
            )
            for n in range(4)
        ]
        for r in range(9)
    ]

    async def scenario() -> tuple[set[tuple[str, tuple[str, str]]], set[tuple[str, tuple[str, str]]]]:
        async with opened(azurite, prefix) as a, opened(azurite, prefix) as b, opened(azurite, prefix) as c:
            stores = (a, b, c)
            await asyncio.gather(*(stores[r % 3].put_namespace_states(batch) for r, batch in enumerate(rounds)))
            listed = {(s.id, key_id) for s in await a.list_namespace_states() for key_id in s.key_ids}
            indexed = {(namespace_id, key_id) for key_id, namespace_id in await a.index_entries()}
            return listed, indexed

    listed, indexed = asyncio.run(scenario())
    assert listed <= indexed


def test_key_records_being_rewritten_are_skipped_not_half_read(azurite: Azurite, prefix: str):
    """A vault's records span several entities when large; a reader that finds rows of two generations (a writer
    between its rows and its head) skips that vault, whose keys are then read in full, and keeps the others."""
    rng = random.Random(5)
    large = {"format": 1, "keys": {f"k{n:05d}": f"{rng.getrandbits(512):0128x}" for n in range(20_000)}}
    small = {"format": 1, "keys": {"k": "v"}}

    async def scenario() -> tuple[int, dict[str, Any]]:
        async with opened(azurite, prefix) as store:
            await store.put_key_records({"kv-large": large, "kv-small": small}, written_at=T0)
            stored = [e for e in await rows(store, "keyrecords") if e["VaultId"] == "kv-large"]
            client = await store._table("keyrecords")
            second = next(e for e in stored if e["RowKey"] == "0001")
            await client.upsert_entity({**second, "Generation": "another"}, mode=UpdateMode.REPLACE)
            return len(stored), await store.list_key_records()

    chunks, listed = asyncio.run(scenario())
    assert chunks > 1
    assert listed == {"kv-small": small}


def test_a_state_stored_before_summaries_reads_as_changed_and_is_rewritten_with_one(azurite: Azurite, prefix: str):
    """An entity an earlier keyhealth wrote has no Summary: its summary says nothing is known (no digest, no
    version), so the next poll writes it the careful way, and from then on it has one."""
    stored = state("sb-old", ("https://kv-payments.vault.azure.net", "k1"))
    later = replace(stored, evaluated_at=T0 + timedelta(minutes=5))

    async def scenario() -> tuple[Any, Any]:
        async with opened(azurite, prefix) as store:
            await store.put_namespace_states([stored])
            client = await store._table("namespaces")
            (entity,) = await rows(store, "namespaces")
            old = {k: v for k, v in entity.items() if k != "Summary"}
            await client.upsert_entity(old, mode=UpdateMode.REPLACE)
            (before,) = await store.list_namespace_summaries()
            assert await store.put_namespace_states([later], previous={before.key: before}) == []
            (after,) = await store.list_namespace_summaries()
            return before, after

    before, after = asyncio.run(scenario())
    assert before.digest == "" and before.version is None
    assert after == later.summary() and after.version is not None


def test_the_index_is_one_entity_a_key_however_many_namespaces_list_it(azurite: Azurite, prefix: str):
    """60 namespaces over 4 keys (each listing 2) make 4 index entities, not 120; each key's lookup names its own."""
    states = [state(f"sb-{n}", (KV, f"k{n % 4}"), (KV, f"k{(n + 1) % 4}")) for n in range(60)]

    async def scenario() -> tuple[int, list[int]]:
        async with opened(azurite, prefix) as store:
            await store.put_namespace_states(states, previous={})
            found = [len(await store.namespaces_for_key(KV, f"k{k}")) for k in range(4)]
            return len(await rows(store, "keyusers")), found

    assert asyncio.run(scenario()) == (4, [30, 30, 30, 30])


def test_a_key_listed_by_thousands_of_namespaces_spans_rows_and_shrinks_back(azurite: Azurite, prefix: str):
    """A document past one entity goes on more rows, written with its head in one transaction; once it shrinks,
    the rows it no longer counts are ignored; rows of different writes are read again, then refused."""
    rng = random.Random(5)
    many = [f"/subscriptions/s/resourceGroups/rg/providers/Microsoft.ServiceBus/namespaces/{rng.randbytes(90).hex()}"]
    many += [f"{many[0][:-180]}{rng.randbytes(90).hex()}" for _ in range(7_999)]
    key = (KV, "central")

    async def scenario() -> tuple[int, int, int, int, str]:
        async with opened(azurite, prefix) as store:
            await store._change_index([(key, namespace_id, True) for namespace_id in many])
            spread = len(await rows(store, "keyusers"))
            named = len(await store.index_entries())
            await store._change_index([(key, namespace_id, False) for namespace_id in many[10:]])
            shrunk = await store.index_entries()
            await store._change_index([(key, namespace_id, True) for namespace_id in many])
            head, *others = sorted(await rows(store, "keyusers"), key=lambda e: str(e["RowKey"]))
            client = TableServiceClient.from_connection_string(azurite.connection_string)
            async with client, client.get_table_client(store.table_name("keyusers")) as table:
                await table.upsert_entity({**others[0], "Generation": "another"}, mode=UpdateMode.REPLACE)
            with pytest.raises(StateStoreError) as refused:
                await store.index_entries()
            return spread, named, len(shrunk), int(str(head["Rows"])), str(refused.value)

    spread, named, shrunk, head_rows, refused = asyncio.run(scenario())
    assert spread >= 2 and head_rows == spread
    assert (named, shrunk) == (8_000, 10)
    assert "being rewritten" in refused


def test_concurrent_writers_of_one_key_in_a_process_share_its_writes(
    azurite: Azurite, prefix: str, monkeypatch: pytest.MonkeyPatch
):
    """300 namespaces moved at once from one key to another (each written the careful way, 16 at a time) merge
    their index changes into a few writes of the two documents: none runs out of tries, and the index follows."""
    before = [state(f"sb-{n}", (KV, "old")) for n in range(300)]
    after = [state(f"sb-{n}", (KV, "new"), evaluated_at=T0 + MINUTE) for n in range(300)]

    async def scenario() -> tuple[int, int, int, int]:
        async with opened(azurite, prefix) as store:
            await store.put_namespace_states(before)
            rounds: list[int] = []
            apply_round = store._apply_round

            async def counted(partition: str, changes: Any) -> None:
                rounds.append(len(changes))
                await apply_round(partition, changes)

            monkeypatch.setattr(store, "_apply_round", counted)
            await store.put_namespace_states(after)
            old = await store.namespaces_for_key(KV, "old")
            new = await store.namespaces_for_key(KV, "new")
            return len(rounds), len(old), len(new), len(await store.index_entries())

    rounds, old, new, entries = asyncio.run(scenario())
    assert (old, new, entries) == (0, 300, 300)
    assert rounds < 300  # a round for each change would be 600 or more (each namespace's addition and settling)


def test_a_state_an_earlier_version_indexed_is_indexed_anew_by_its_next_write(azurite: Azurite, prefix: str):
    """A state whose summary says the per-entry index of earlier versions held its keys reads as changed (a poll
    writes it even if its judgement did not move) and unsettled (no version to write on blindly), and the next
    write from that summary puts it in the key documents."""
    current = state("sb-a", (KV, "kept"))

    async def scenario() -> tuple[tuple[str, str | None], list[str], list[str]]:
        async with opened(azurite, prefix) as store:
            await store.put_namespace_states([current])
            client = TableServiceClient.from_connection_string(azurite.connection_string)
            async with client:
                async with client.get_table_client(store.table_name("namespaces")) as table:
                    entity = next(iter(await rows(store, "namespaces")))
                    entity["Summary"] = json.dumps([*json.loads(str(entity["Summary"]))[:4], True])
                    await table.upsert_entity(entity, mode=UpdateMode.REPLACE)
                async with client.get_table_client(store.table_name("keyusers")) as table:
                    for document in await rows(store, "keyusers"):
                        await table.delete_entity(str(document["PartitionKey"]), str(document["RowKey"]))
            summaries = await store.list_namespace_summaries()
            missing = await store.namespaces_for_key(KV, "kept")
            later = replace(current, evaluated_at=T0 + MINUTE)
            await store.put_namespace_states([later], previous={s.key: s for s in summaries})
            return (summaries[0].digest, summaries[0].version), missing, await store.namespaces_for_key(KV, "kept")

    assert asyncio.run(scenario()) == (("", None), [], [current.id])

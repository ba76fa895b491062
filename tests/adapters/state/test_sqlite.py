"""What the SQLite store adds to the contract: its file, its schema, processes sharing it, and the event loop."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from monitor.adapters.state_sqlite import SCHEMA_VERSION, SqliteStateStore
from monitor.domain.errors import StateStoreError
from tests.adapters.state import workers
from tests.adapters.state.support import T0, state


def test_an_in_memory_store_works_and_is_private():
    """':memory:' gives a working store whose contents no other store sees."""

    async def scenario() -> tuple[bool, bool]:
        async with SqliteStateStore(":memory:") as first, SqliteStateStore(":memory:") as second:
            await first.put_namespace_states([state("sb-a", ("https://kv.vault.azure.net", "k"))])
            return (
                await first.get_namespace_state(state("sb-a").id) is not None,
                await second.get_namespace_state(state("sb-a").id) is not None,
            )

    assert asyncio.run(scenario()) == (True, False)


def test_a_new_file_gets_the_schema_version_and_wal_journal(tmp_path: Path):
    """Opening a new file creates the schema, records its version in schema_version, and switches to WAL."""
    path = tmp_path / "state.sqlite"

    async def scenario() -> int:
        async with SqliteStateStore(path) as store:
            return await store.schema_version()

    assert asyncio.run(scenario()) == SCHEMA_VERSION
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_file_from_a_newer_keyhealth_is_refused(tmp_path: Path):
    """A database whose schema version is newer than this code knows raises StateStoreError instead of being misread."""
    path = tmp_path / "state.sqlite"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        raw.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))

    async def scenario() -> None:
        async with SqliteStateStore(path) as store:
            await store.get_lease("poll")

    with pytest.raises(StateStoreError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        asyncio.run(scenario())


def test_processes_sharing_a_file_dedupe_events_and_share_one_lease(tmp_path: Path):
    """Four processes racing on one file: each event id is new to exactly one of them, and one takes the lease."""
    path = str(tmp_path / "state.sqlite")
    event_ids = [f"event-{n}" for n in range(60)]
    context = multiprocessing.get_context("spawn")  # a fresh interpreter each, as separate hosts would be
    barrier = context.Barrier(4)
    results = context.Queue()
    processes = [
        context.Process(target=workers.race, args=(path, worker, event_ids, barrier, results)) for worker in range(4)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    won = sorted(event_id for _, ids, _ in outcomes for event_id in ids)
    assert won == sorted(event_ids)
    assert [leased for _, _, leased in outcomes].count(True) == 1


def test_a_call_waiting_for_another_process_does_not_block_the_event_loop(tmp_path: Path):
    """While another connection holds the write lock, a store call waits in its thread and the loop keeps running."""
    path = tmp_path / "state.sqlite"

    async def scenario() -> tuple[bool, int]:
        async with SqliteStateStore(path) as store:
            await store.get_lease("warm-up")
            blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            blocker.execute("BEGIN IMMEDIATE")
            marking = asyncio.create_task(store.mark_event_processed("e", at=T0))
            ticks = 0
            for _ in range(10):
                await asyncio.sleep(0.02)
                ticks += 1
            assert not marking.done()
            blocker.execute("COMMIT")
            blocker.close()
            return await marking, ticks

    assert asyncio.run(scenario()) == (True, 10)


def test_a_lock_held_past_the_busy_timeout_is_a_state_store_error(tmp_path: Path):
    """A write that cannot get the lock within busy_timeout raises StateStoreError and leaves the store usable."""
    path = tmp_path / "state.sqlite"

    async def scenario() -> bool:
        async with SqliteStateStore(path, busy_timeout=0.1) as store:
            await store.get_lease("warm-up")
            blocker = sqlite3.connect(path, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            with pytest.raises(StateStoreError, match="locked"):
                await store.acquire_lease("poll", "A", timedelta(minutes=1), now=T0)
            blocker.execute("ROLLBACK")
            blocker.close()
            return await store.acquire_lease("poll", "A", timedelta(minutes=1), now=T0) is not None

    assert asyncio.run(scenario()) is True


def test_a_closed_store_refuses_calls(tmp_path: Path):
    """After close() every call raises StateStoreError rather than reopening the file behind the caller's back."""

    async def scenario() -> None:
        store = SqliteStateStore(tmp_path / "state.sqlite")
        await store.close()
        await store.get_lease("poll")

    with pytest.raises(StateStoreError, match="closed"):
        asyncio.run(scenario())


def test_repr_names_the_file():
    """The store's repr shows its path (SQLite has no secret to hide)."""
    assert repr(SqliteStateStore("/var/lib/keyhealth/state.sqlite")) == (
        "SqliteStateStore(path='/var/lib/keyhealth/state.sqlite')"
    )


def test_many_stores_opening_one_new_file_at_once_all_succeed(tmp_path: Path):
    """Switching a new file to WAL races between connections; each store waits instead of failing."""

    async def open_all(path: Path) -> list[bool]:
        stores = [SqliteStateStore(path) for _ in range(8)]
        try:
            return await asyncio.gather(*(s.mark_event_processed(f"e-{n}", at=T0) for n, s in enumerate(stores)))
        finally:
            for store in stores:
                await store.close()

    for attempt in range(10):
        assert asyncio.run(open_all(tmp_path / f"state-{attempt}.sqlite")) == [True] * 8

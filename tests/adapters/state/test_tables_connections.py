"""The Table store when a connection to Table Storage fails under a transaction, through a real relay to Azurite.

A pooled connection the server has closed while idle (Azurite after 5 s, Azure's front ends after minutes)
fails the next request sent on it. azure-core never sends a POST again after that, and every entity-group
transaction is a POST: a poll whose first write lands on such a connection must still store what it judged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Literal

import pytest

from monitor.adapters.state_tables import TableStateStore
from monitor.app.state import Lease, NamespaceState
from tests.adapters.state.support import AZURITE_KEY, T0, Azurite, state

KV = "https://kv-payments.vault.azure.net"
Cut = Literal["unsent", "unanswered"]


class CuttingRelay:
    """A TCP relay to Azurite that cuts the next request whose head holds `cut_marker` (a $batch unless told):
    "unsent" closes the connection instead of passing the request on; "unanswered" passes it on, so Azurite
    applies it, and closes the connection instead of passing the response back."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self.cut: Cut | None = None
        self.cut_marker = b"/$batch HTTP/1.1"
        self.cuts = 0
        self.requests = 0  # request heads seen (a request's head arrives in one read here)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> CuttingRelay:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"TableEndpoint=http://127.0.0.1:{self.port}/devstoreaccount1;"
        )

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        swallow_response = asyncio.Event()

        def close() -> None:
            client_writer.close()
            server_writer.close()

        async def upstream() -> None:
            while data := await client_reader.read(65536):
                self.requests += sum(data.startswith(verb) for verb in (b"GET ", b"POST ", b"PUT ", b"DELETE "))
                if self.cut is not None and self.cut_marker in data.split(b"\r\n", 1)[0]:
                    cut, self.cut = self.cut, None
                    self.cuts += 1
                    if cut == "unsent":
                        close()
                        return
                    swallow_response.set()
                server_writer.write(data)
                await server_writer.drain()
            close()

        async def downstream() -> None:
            while data := await server_reader.read(65536):
                if swallow_response.is_set():
                    close()
                    return
                client_writer.write(data)
                await client_writer.drain()
            close()

        try:
            await asyncio.gather(upstream(), downstream())
        except (ConnectionError, asyncio.CancelledError):
            close()
        finally:
            self._tasks.discard(task)


@contextlib.asynccontextmanager
async def relayed_store(azurite: Azurite, prefix: str) -> AsyncIterator[tuple[CuttingRelay, TableStateStore]]:
    async with (
        CuttingRelay(azurite.port) as relay,
        TableStateStore.from_connection_string(relay.connection_string(), table_prefix=prefix) as store,
    ):
        yield relay, store


def _states(count: int) -> list[NamespaceState]:
    return [state(f"sb-{i:03d}", (KV, f"key-{i % 3}")) for i in range(count)]


async def _stored(store: TableStateStore, states: list[NamespaceState]) -> dict[str, object]:
    found = await asyncio.gather(*(store.get_namespace_state(s.id) for s in states))
    return {s.id: (f.document.get("status_now") if f is not None else None) for s, f in zip(states, found, strict=True)}


async def _cut_then_write(azurite: Azurite, prefix: str, cut: Cut, *, update: bool) -> tuple[int, dict[str, object]]:
    async with relayed_store(azurite, prefix) as (relay, store):
        states = _states(30)
        if update:
            await store.put_namespace_states(states, previous={})
            previous = {summary.key: summary for summary in await store.list_namespace_summaries()}
            states = [replace(s, document={**s.document, "status_now": "revoked"}, evaluated_at=T0) for s in states]
        else:
            previous = {}
        relay.cut = cut
        stale = await store.put_namespace_states(states, previous=previous)
        assert stale == []
        return relay.cuts, await _stored(store, states)


def test_a_new_states_transaction_whose_connection_drops_before_it_is_sent_is_sent_again(azurite: Azurite, prefix: str):
    cuts, stored = asyncio.run(_cut_then_write(azurite, prefix, "unsent", update=False))
    assert cuts == 1
    assert set(stored.values()) == {"healthy"}


def test_a_transaction_applied_whose_answer_is_lost_is_settled_by_reading_back(azurite: Azurite, prefix: str):
    """Sent again, the ETag-conditional updates Azure already applied are refused (412): those states go the
    careful way (read, then written at what is there), and every namespace holds the new verdict."""
    cuts, stored = asyncio.run(_cut_then_write(azurite, prefix, "unanswered", update=True))
    assert cuts == 1
    assert set(stored.values()) == {"revoked"}


def test_new_states_whose_transaction_answer_is_lost_are_all_stored_once(azurite: Azurite, prefix: str):
    """Sent again, the creates Azure already applied are refused (409): nothing is duplicated or lost."""

    async def scenario() -> tuple[int, int, set[object]]:
        async with relayed_store(azurite, prefix) as (relay, store):
            states = _states(30)
            relay.cut = "unanswered"
            assert await store.put_namespace_states(states, previous={}) == []
            summaries = await store.list_namespace_summaries()
            return relay.cuts, len(summaries), set((await _stored(store, states)).values())

    cuts, count, statuses = asyncio.run(scenario())
    assert cuts == 1
    assert count == 30
    assert statuses == {"healthy"}


def test_the_instance_that_wrote_a_budget_window_last_takes_more_of_it_in_one_request(azurite: Azurite, prefix: str):
    """One instance polls at a time: its own last write of a vault's budget window is what is there, so a grant
    is a conditional write on it, not a read and a write; another instance's write since is refused and read."""

    async def scenario() -> tuple[int, list[int], int]:
        async with relayed_store(azurite, prefix) as (relay, store):
            await store.take_budget("kv-a", T0, 1, 1000)  # opens the window (and creates the tables)
            relay.requests = 0
            grants = [await store.take_budget("kv-a", T0, 10, 1000) for _ in range(10)]
            mine = relay.requests
            async with TableStateStore.from_connection_string(azurite.connection_string, table_prefix=prefix) as other:
                assert await other.take_budget("kv-a", T0, 900, 1000) == 899
            grants.append(await store.take_budget("kv-a", T0, 10, 1000))  # refused at its guess, read, then 0
            return mine, grants, relay.requests - mine

    mine, grants, after_other = asyncio.run(scenario())
    assert grants == [10] * 10 + [0]
    assert mine == 10
    assert after_other == 2  # the refused guess, then the read that shows the window spent


def _cut_budget_grant(azurite: Azurite, prefix: str, cut: Cut) -> tuple[int, int, int]:
    """The first grant of a window (a create: a POST, which azure-core never sends twice), 10 units, its write
    cut as `cut` says; (cuts, units granted, units another instance then gets of the window's 1,000)."""

    async def scenario() -> tuple[int, int, int]:
        async with relayed_store(azurite, prefix) as (relay, store):
            await store.take_budget("kv-b", T0, 1, 1000)  # creates the tables
            relay.cut, relay.cut_marker = cut, f"/{prefix}budgets".encode()
            granted = await store.take_budget("kv-a", T0, 10, 1000)
            async with TableStateStore.from_connection_string(azurite.connection_string, table_prefix=prefix) as other:
                left = await other.take_budget("kv-a", T0, 1000, 1000)
            return relay.cuts, granted, left

    return asyncio.run(scenario())


def test_a_budget_grant_whose_connection_drops_before_it_is_sent_is_sent_again(azurite: Azurite, prefix: str):
    """A pooled connection the server closed fails the grant's write; it is sent again on a new one, and the
    vault's reads go on at the shared pace instead of falling back to pacing alone."""
    cuts, granted, left = _cut_budget_grant(azurite, prefix, "unsent")
    assert (cuts, granted) == (1, 10)
    assert left == 1000 - 10


def test_a_budget_grant_applied_whose_answer_is_lost_counts_on_the_safe_side(azurite: Azurite, prefix: str):
    """Sent again, the grant Azure already applied is refused (409) and the window read: this instance's 10
    are counted twice, so together the instances take less of the vault than the share, never more."""
    cuts, granted, left = _cut_budget_grant(azurite, prefix, "unanswered")
    assert (cuts, granted) == (1, 10)
    assert left == 1000 - 20


def _cut_create(azurite: Azurite, prefix: str, table: str, cut: Cut) -> tuple[int, bool, object, object]:
    """An event's mark and a new lease (each a create: a POST) with their write cut as `cut` says: (cuts, what the
    event mark answered, the lease acquired, what another instance then gets of the same lease)."""

    async def scenario() -> tuple[int, bool, object, object]:
        async with relayed_store(azurite, prefix) as (relay, store):
            await store.take_budget("kv-b", T0, 1, 1000)  # creates the tables
            # The create itself (a POST to the table), not the read of the entity before it.
            relay.cut, relay.cut_marker = cut, f"/{prefix}{table} HTTP/1.1".encode()
            first = await store.mark_event_processed("event-1", at=T0) if table == "events" else True
            lease = await store.acquire_lease("poll", "A", timedelta(minutes=5), now=T0) if table == "leases" else None
            async with TableStateStore.from_connection_string(azurite.connection_string, table_prefix=prefix) as other:
                again = (
                    await other.mark_event_processed("event-1", at=T0)
                    if table == "events"
                    else await other.acquire_lease("poll", "B", timedelta(minutes=5), now=T0)
                )
            return relay.cuts, first, lease, again

    return asyncio.run(scenario())


@pytest.mark.parametrize("cut", ["unsent", "unanswered"])
def test_an_event_mark_whose_connection_drops_is_sent_again_and_counted_once(azurite: Azurite, prefix: str, cut: Cut):
    """The mark is sent again on a new connection (a lost answer finds it there: this call's own); a redelivery
    of the event is then a duplicate."""
    cuts, first, _, again = _cut_create(azurite, prefix, "events", cut)
    assert (cuts, first, again) == (1, True, False)


@pytest.mark.parametrize("cut", ["unsent", "unanswered"])
def test_a_new_lease_whose_connection_drops_is_held_by_the_caller(azurite: Azurite, prefix: str, cut: Cut):
    """A lease created on a connection the server closed is sent again; when the lost send had created it, the
    lease read back names the caller with its token: it holds it, and nobody else gets it."""
    cuts, _, lease, other = _cut_create(azurite, prefix, "leases", cut)
    assert cuts == 1
    assert isinstance(lease, Lease) and (lease.holder, lease.token) == ("A", 1)
    assert other is None

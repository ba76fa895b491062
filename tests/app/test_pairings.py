"""GeoDrPairings: a namespace's pairing is read once, then taken as read until it falls due (each namespace at
its own point of the refresh period), shared through records any instance recalls, and one failed read neither
unpairs a namespace nor is cached as a fact. The reader here is a stand-in for ARM that counts its calls; the
ARM adapter itself is tested against the stand-in (tests/app/test_geo_dr_check.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

from monitor.app.pairings import RECORD_PREFIX, GeoDrPairings, PairedInventory
from monitor.app.ports import FleetListing, PageCallback
from monitor.domain.errors import ReadError
from monitor.domain.model import GeoPairing, KeyRef, Namespace, NamespaceIdentity

SUB = "00000000-0000-0000-0000-000000000000"


def _namespace(name: str) -> Namespace:
    return Namespace(
        id=f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.ServiceBus/namespaces/{name}",
        name=name,
        keys=(KeyRef("https://kv.vault.azure.net", "k1"),),
    )


PAIRED = GeoPairing(
    "orders",
    "/subscriptions/x/resourceGroups/rg-dr/providers/Microsoft.ServiceBus/namespaces/sb-dr",
    partner_identity=NamespaceIdentity(principal_id="p-dr", user_assigned={"/ua/one": "p-one"}),
)


class CountingReader:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.failing: set[str] = set()
        self.pairings: dict[str, GeoPairing | None] = {}

    async def read_pairing(self, namespace: Namespace) -> GeoPairing | None:
        self.calls.append(namespace.name)
        if namespace.name in self.failing:
            raise ReadError(f"Geo-DR configurations of {namespace.name}", "403 AuthorizationFailed")
        return self.pairings.get(namespace.name)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _pairings(reader: CountingReader, clock: Clock) -> GeoDrPairings:
    return GeoDrPairings(reader, refresh=timedelta(hours=1), wall=clock)


async def _paired(pairings: GeoDrPairings, namespace: Namespace) -> Namespace:
    known, pairing = pairings.fresh(namespace)
    if known:
        return Namespace(namespace.id, namespace.name, namespace.keys, geo_dr=pairing)
    return await pairings.read(namespace)


def test_a_pairing_is_read_once_then_again_only_once_due_each_namespace_at_its_own_time():
    reader, clock = CountingReader(), Clock()
    reader.pairings["sb-orders"] = PAIRED
    pairings = _pairings(reader, clock)
    fleet = [_namespace(f"sb-{i}") for i in range(200)] + [_namespace("sb-orders")]

    async def poll() -> list[Namespace]:
        return [await _paired(pairings, n) for n in fleet]

    first = asyncio.run(poll())
    assert len(reader.calls) == 201
    assert next(n for n in first if n.name == "sb-orders").geo_dr == PAIRED
    reader.calls.clear()
    clock.now += 29 * 60  # inside the first half of the hour nothing falls due
    asyncio.run(poll())
    assert reader.calls == []
    clock.now += 16 * 60  # 45 minutes after the read: roughly half the fleet has fallen due
    asyncio.run(poll())
    assert 50 < len(reader.calls) < 150
    clock.now += 16 * 60  # past the hour since the first read: the rest
    reader.calls.clear()
    asyncio.run(poll())
    assert 50 < len(reader.calls) < 150 and len(set(reader.calls)) == len(reader.calls)


def test_a_failed_read_keeps_the_pairing_last_known_and_is_asked_again_soon():
    reader, clock = CountingReader(), Clock()
    reader.pairings["sb-orders"] = PAIRED
    pairings = _pairings(reader, clock)
    orders = _namespace("sb-orders")
    assert asyncio.run(pairings.read(orders)).geo_dr == PAIRED
    reader.failing.add("sb-orders")
    assert asyncio.run(pairings.read(orders)).geo_dr == PAIRED  # not unpaired by one refused read
    clock.now += 6 * 60  # the retry is due within five minutes, not an hour
    assert pairings.fresh(orders) == (False, None)
    never = _namespace("sb-never")
    reader.failing.add("sb-never")
    assert asyncio.run(pairings.read(never)).geo_dr is None


def test_records_carry_the_pairings_to_a_fresh_instance_which_reads_none_again():
    reader, clock = CountingReader(), Clock()
    reader.pairings["sb-orders"] = PAIRED
    first = _pairings(reader, clock)
    fleet = [_namespace("sb-orders"), _namespace("sb-single")]
    for namespace in fleet:
        asyncio.run(first.read(namespace))
    records = first.take_changed_records()
    assert list(records) == [f"{RECORD_PREFIX}{SUB}"]
    assert first.take_changed_records() == {}  # nothing changed since
    other = CountingReader()
    fresh = _pairings(other, clock)
    vault_records = {"https://kv.vault.azure.net": {"format": 1, "keys": {}}}  # the key reader's, not ours
    assert fresh.recall({**records, **vault_records}) == 2
    assert fresh.fresh(fleet[0]) == (True, PAIRED) and fresh.fresh(fleet[1]) == (True, None)
    assert other.calls == []
    # A record written in another format, or damaged, is read again rather than trusted.
    damaged = {f"{RECORD_PREFIX}{SUB}": {"format": "geo-dr/1", "namespaces": {"x": ["bad", 0.0]}}}
    assert _pairings(other, clock).recall(damaged) == 0


class PagedInventory:
    """Two pages of namespaces, as Resource Graph gives them."""

    def __init__(self, pages: Sequence[Sequence[Namespace]]) -> None:
        self.pages = pages

    async def list_subscriptions(self) -> list[str]:
        return [SUB]

    async def list_namespaces(self, subscription: str) -> list[Namespace]:
        return [n for page in self.pages for n in page]

    async def list_namespaces_in(
        self, subscriptions: Sequence[str], *, on_page: PageCallback | None = None
    ) -> FleetListing:
        for page in self.pages:
            if on_page is not None:
                on_page(page)
            await asyncio.sleep(0)
        return FleetListing(namespaces=[n for page in self.pages for n in page], source="resource-graph")


def test_the_inventory_tells_every_page_paired_and_lists_each_namespace_once():
    reader, clock = CountingReader(), Clock()
    reader.pairings["sb-orders"] = PAIRED
    pairings = _pairings(reader, clock)
    asyncio.run(pairings.read(_namespace("sb-known")))  # known already: told with its page, unread
    reader.calls.clear()
    pages = [[_namespace("sb-known"), _namespace("sb-orders")], [_namespace("sb-other")]]
    told: list[Namespace] = []

    async def run() -> FleetListing:
        return await PairedInventory(PagedInventory(pages), pairings).list_namespaces_in([SUB], on_page=told.extend)

    listing = asyncio.run(run())
    assert sorted(reader.calls) == ["sb-orders", "sb-other"]
    assert sorted(n.name for n in told) == ["sb-known", "sb-orders", "sb-other"]
    assert [n.name for n in listing.namespaces] == ["sb-known", "sb-orders", "sb-other"]
    assert {n.name: n.geo_dr for n in listing.namespaces}["sb-orders"] == PAIRED
    assert {n.name: n.geo_dr for n in told}["sb-orders"] == PAIRED


def test_a_poll_waits_for_at_most_its_budget_of_pairings_reads_some_beside_and_leaves_the_rest_due():
    reader, clock = CountingReader(), Clock()
    reader.pairings = {"sb-a": PAIRED, "sb-b": PAIRED, "sb-c": PAIRED}
    pairings = _pairings(reader, clock)
    pages = [[_namespace("sb-a"), _namespace("sb-b")], [_namespace("sb-c")]]
    inventory = PairedInventory(PagedInventory(pages), pairings, waits_for=1, reads_beside=1)

    async def poll() -> FleetListing:
        listing = await inventory.list_namespaces_in([SUB])
        await pairings.settle()
        return listing

    first = asyncio.run(poll())
    # sb-a waited for; sb-b read beside the poll (judged without its pairing this time); sb-c left due.
    assert [n.geo_dr is not None for n in first.namespaces] == [True, False, False]
    assert sorted(reader.calls) == ["sb-a", "sb-b"]
    reader.calls.clear()
    second = asyncio.run(poll())
    assert reader.calls == ["sb-c"]  # the one still due, waited for now
    assert all(n.geo_dr == PAIRED for n in second.namespaces)
    reader.calls.clear()
    asyncio.run(poll())
    assert reader.calls == []

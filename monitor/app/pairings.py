"""Each CMK namespace's Geo-DR pairing, read over ARM once in a while rather than every poll.

A pairing is one ARM listing per namespace, and pairings change seldom: reading every namespace's each poll
would cost a 100,000-namespace fleet 100,000 ARM reads every 5 minutes. So a pairing, once read, is taken as
it is until it falls due (within `refresh`, each namespace at its own point of it, so a fleet's refreshes
spread over the polls), and polls share what they read through the state store, so a fresh instance does not
read the fleet's pairings again. What the pairing rests on that does change often, the partner's access to
the vaults, is read with the vaults every poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from monitor.app.ports import FleetListing, InventoryReader, PageCallback, PairingReader
from monitor.domain.errors import ReadError
from monitor.domain.model import GEO_DR_ROLES, GeoPairing, Namespace, NamespaceIdentity, name_id, subscription_of

log = logging.getLogger("keyhealth.geo-dr")

DEFAULT_REFRESH = timedelta(hours=6)
# A partner that could not be read, or configurations that could not be listed, are asked again this soon.
RETRY = timedelta(minutes=5)
RECORD_FORMAT = "geo-dr/1"
# Record ids share the state store's key-record space with vault ids (https URIs), which they cannot equal.
RECORD_PREFIX = "geo-dr/"


@dataclass(frozen=True, slots=True)
class _Known:
    pairing: GeoPairing | None  # None: the namespace has no pairing
    due: float  # wall-clock seconds: read it again from then on


def _spread(namespace_id: str) -> float:
    """Where in the second half of the refresh period a namespace falls due: fixed per namespace, so the
    fleet's refreshes spread over the polls instead of all falling due at one."""
    digest = hashlib.sha256(name_id(namespace_id).encode()).digest()
    return 0.5 + 0.5 * int.from_bytes(digest[:4], "big") / 2**32


def _subscription(namespace_id: str) -> str:
    return name_id(subscription_of(namespace_id))


def _pairing_record(pairing: GeoPairing | None) -> list[Any] | None:
    if pairing is None:
        return None
    identity = pairing.partner_identity
    return [
        pairing.alias,
        pairing.partner,
        pairing.role,
        None if identity is None else identity.principal_id,
        None if identity is None else dict(identity.user_assigned),
        pairing.partner_blind,
    ]


def _pairing_of(record: object) -> GeoPairing | None:
    """A record as _pairing_record wrote it; ValueError for anything else."""
    if not (isinstance(record, list) and len(record) == 6):
        raise ValueError("not a pairing record")
    alias, partner, role, principal, user_assigned, blind = record
    if not (isinstance(alias, str) and isinstance(partner, str) and role in GEO_DR_ROLES):
        raise ValueError("not a pairing record")
    identity = None
    if isinstance(user_assigned, dict):
        identity = NamespaceIdentity(
            principal_id=principal if isinstance(principal, str) else None,
            user_assigned={str(k): v if isinstance(v, str) else None for k, v in user_assigned.items()},
        )
    return GeoPairing(alias, partner, role, partner_identity=identity, partner_blind=blind if blind else None)


class GeoDrPairings:
    """The pairings known so far, by namespace, and reading the ones due."""

    def __init__(
        self,
        reader: PairingReader,
        *,
        refresh: timedelta = DEFAULT_REFRESH,
        concurrency: int = 16,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._reader = reader
        self._refresh = refresh.total_seconds()
        self._semaphore = asyncio.Semaphore(concurrency)
        self._wall = wall
        self._known: dict[str, _Known] = {}  # by name_id of the namespace id
        self._changed: set[str] = set()  # subscriptions whose pairings changed since take_changed_records
        self._background: dict[str, asyncio.Future[Namespace]] = {}  # reads no judgement waits for
        self.reads = 0  # pairings read over ARM, for benchmarks and logs

    def last_known(self, namespace: Namespace) -> GeoPairing | None:
        """The pairing last read for the namespace, due or not (None: none, or never read)."""
        known = self._known.get(name_id(namespace.id))
        return known.pairing if known is not None else None

    def read_later(self, namespace: Namespace) -> None:
        """Read the namespace's pairing in the background (once): a later judgement has it."""
        key = name_id(namespace.id)
        if key not in self._background:
            self._background[key] = asyncio.ensure_future(self.read(namespace))

    async def settle(self) -> None:
        """Wait for the background reads (they ran beside the rest of the poll); what failed is logged."""
        running = list(self._background.values())
        self._background.clear()
        for outcome in await asyncio.gather(*running, return_exceptions=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                log.warning("keyhealth: a Geo-DR pairing read failed: %s", outcome)

    def fresh(self, namespace: Namespace) -> tuple[bool, GeoPairing | None]:
        """(True, its pairing) when the namespace's pairing is known and not due; (False, None) otherwise."""
        known = self._known.get(name_id(namespace.id))
        if known is None or known.due <= self._wall():
            return False, None
        return True, known.pairing

    async def read(self, namespace: Namespace) -> Namespace:
        """`namespace` with its pairing read now. When it cannot be read, the pairing last known (or none) is
        kept and asked again within RETRY: one failed read does not unpair a namespace, nor alert on it."""
        key = name_id(namespace.id)
        async with self._semaphore:
            try:
                pairing = await self._reader.read_pairing(namespace)
            except ReadError as failure:
                previous = self._known.get(key)
                log.warning("keyhealth: Geo-DR pairing of %s not read (%s)", namespace.name, failure.reason)
                kept = previous.pairing if previous is not None else None
                self._known[key] = _Known(kept, self._wall() + RETRY.total_seconds())
                return _with_pairing(namespace, kept)
        self.reads += 1
        # A partner that could not be read is asked again soon; a pairing read whole holds for its refresh.
        wait = RETRY.total_seconds() if pairing is not None and pairing.partner_blind else self._refresh
        previous = self._known.get(key)
        self._known[key] = _Known(pairing, self._wall() + wait * _spread(namespace.id))
        if previous is None or previous.pairing != pairing:
            self._changed.add(_subscription(namespace.id))
        return _with_pairing(namespace, pairing)

    def take_changed_records(self) -> dict[str, dict[str, Any]]:
        """The pairings of each subscription whose pairings changed since the last call, as records for the
        state store (by record id), for `recall` on any instance."""
        by_subscription: dict[str, dict[str, Any]] = {sub: {} for sub in self._changed}
        for key, known in self._known.items():
            entries = by_subscription.get(_subscription(key))
            if entries is not None:
                entries[key] = [_pairing_record(known.pairing), known.due]
        self._changed.clear()
        return {
            f"{RECORD_PREFIX}{sub}": {"format": RECORD_FORMAT, "namespaces": entries}
            for sub, entries in by_subscription.items()
        }

    def recall(self, records: Mapping[str, Mapping[str, Any]]) -> int:
        """Take in pairings another instance read, where this one knows none; records of another kind or
        format, and unreadable entries, are skipped (those pairings are read). Returns how many."""
        recalled = 0
        for record_id, document in records.items():
            if not record_id.startswith(RECORD_PREFIX) or document.get("format") != RECORD_FORMAT:
                continue
            entries = document.get("namespaces")
            if not isinstance(entries, Mapping):
                continue
            for key, entry in entries.items():
                if key in self._known or not (isinstance(entry, list) and len(entry) == 2):
                    continue
                record, due = entry
                if not isinstance(due, int | float) or isinstance(due, bool):
                    continue
                try:
                    pairing = _pairing_of(record) if record is not None else None
                except ValueError:
                    continue
                self._known[str(key)] = _Known(pairing, float(due))
                recalled += 1
        return recalled


class PairedInventory:
    """InventoryReader that gives each listed namespace its Geo-DR pairing: a known one at once, as its page
    comes; a due one once read (its page's other namespaces are not held up for it).

    `waits_for` bounds how many due pairings one listing waits for (None: all, as a one-off check does), and
    `reads_beside` how many more it reads beside the rest of the poll, for the next one; the others are given
    their last known pairing (none, if never read) and stay due. The first poll of a 100,000-namespace
    deployment is not held up by 100,000 ARM reads: it learns the fleet's pairings over its first polls."""

    def __init__(
        self,
        inner: InventoryReader,
        pairings: GeoDrPairings,
        *,
        waits_for: int | None = None,
        reads_beside: int = 0,
    ) -> None:
        self._inner = inner
        self.pairings = pairings
        self._waits_for = waits_for
        self._reads_beside = reads_beside

    async def list_subscriptions(self) -> list[str]:
        return await self._inner.list_subscriptions()

    async def list_namespaces(self, subscription: str) -> list[Namespace]:
        listed = await self._inner.list_namespaces(subscription)
        return [await self._paired(n) for n in listed]

    async def _paired(self, namespace: Namespace) -> Namespace:
        known, pairing = self.pairings.fresh(namespace)
        return _with_pairing(namespace, pairing) if known else await self.pairings.read(namespace)

    async def list_namespaces_in(
        self, subscriptions: Sequence[str], *, on_page: PageCallback | None = None
    ) -> FleetListing:
        paired: dict[str, Namespace] = {}
        reading: dict[str, asyncio.Future[Namespace]] = {}

        def told(namespaces: Sequence[Namespace]) -> None:
            if on_page is not None and namespaces:
                on_page(namespaces)

        async def read_then_tell(due: list[Namespace]) -> None:
            done = await asyncio.gather(*(reading[name_id(n.id)] for n in due))
            paired.update((name_id(n.id), n) for n in done)
            told(done)

        pending: list[asyncio.Future[None]] = []
        budget, beside = self._waits_for, self._reads_beside

        def page(namespaces: Sequence[Namespace]) -> None:
            nonlocal budget, beside
            ready, due = [], []
            for namespace in namespaces:
                key = name_id(namespace.id)
                known, pairing = self.pairings.fresh(namespace)
                if not known and key not in reading and budget is not None and budget <= 0:
                    if beside > 0:
                        self.pairings.read_later(namespace)
                        beside -= 1
                    known, pairing = True, self.pairings.last_known(namespace)
                if known:
                    paired[key] = with_pairing = _with_pairing(namespace, pairing)
                    ready.append(with_pairing)
                elif key not in reading:  # a listing started again over ARM may list it twice
                    reading[key] = asyncio.ensure_future(self.pairings.read(namespace))
                    due.append(namespace)
                    if budget is not None:
                        budget -= 1
            told(ready)
            if due:
                pending.append(asyncio.ensure_future(read_then_tell(due)))

        try:
            listing = await self._inner.list_namespaces_in(subscriptions, on_page=page)
            await asyncio.gather(*pending)
        finally:
            under_way: list[asyncio.Future[Any]] = [*pending, *reading.values()]
            for work in under_way:
                if not work.done():
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await work
        # A namespace no page told (an inventory that reports no pages) is paired here.
        missing = [n for n in listing.namespaces if name_id(n.id) not in paired]
        for namespace in await asyncio.gather(*(self._paired(n) for n in missing)):
            paired[name_id(namespace.id)] = namespace
        return replace(listing, namespaces=[paired[name_id(n.id)] for n in listing.namespaces])


def _with_pairing(namespace: Namespace, pairing: GeoPairing | None) -> Namespace:
    # Most namespaces have no pairing: a poll of 100,000 need not copy each one to say so.
    return namespace if namespace.geo_dr == pairing else replace(namespace, geo_dr=pairing)

"""Reading the fleet: list the namespaces, read their vaults and keys into a snapshot (blind spots
included), then predict and judge it; `keyhealth check` is this alone, the poll and events build on it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from monitor.app.pairings import GeoDrPairings
from monitor.app.ports import (
    AccessObserver,
    AccessReader,
    InventoryReader,
    KeyReader,
    ObservationReading,
    PageCallback,
    VaultReading,
)
from monitor.domain.errors import ReadError
from monitor.domain.findings import Thresholds
from monitor.domain.fleet import FleetReport, JudgedAhead, NamespaceJudge, NamespaceReport, evaluate
from monitor.domain.model import (
    BlindScope,
    BlindSpot,
    Key,
    KeyId,
    KeyRef,
    Namespace,
    Observation,
    Scenario,
    Snapshot,
    Vault,
    key_url,
    name_id,
    vault_id,
)

ProgressCallback = Callable[[str, int, int], None]  # (stage, done, total)
JudgedCallback = Callable[[Sequence[NamespaceReport]], Awaitable[None]]
T = TypeVar("T")
# Namespaces judged between two yields to the event loop while the inventory is still read: its next
# page's request, and the store's, are not held up behind a whole page's judging.
JUDGED_BETWEEN_YIELDS = 100


@dataclass(frozen=True, slots=True)
class Readers:
    """The three reading ports a fleet scan needs."""

    inventory: InventoryReader
    keys: KeyReader
    access: AccessReader
    # The Geo-DR pairings the inventory gives its namespaces (the poll shares them through the store).
    pairings: GeoDrPairings | None = None
    # The service's own key accesses, from the vaults' audit logs (KEYHEALTH_AUDIT_LOGS=on).
    observer: AccessObserver | None = None


@dataclass(frozen=True, slots=True)
class _WantedKey:
    vault_uri: str
    name: str
    pinned: frozenset[str]


def _want(wanted: dict[KeyId, _WantedKey], ref: KeyRef) -> None:
    """Add `ref`'s key to `wanted`, with its pinned version if it has one."""
    entry = wanted.get(ref.key_id) or _WantedKey(ref.vault, ref.name, frozenset())
    wanted[ref.key_id] = dataclasses.replace(entry, pinned=entry.pinned | {ref.version}) if ref.version else entry


def _with_key_access(key: Key, vault_reading: VaultReading, vault: str, name: str) -> Key:
    """`key` with the permissions granted at its own scope, as the vault reading found them."""
    key_access = vault_reading.key_access.get(vault, {}).get(name)
    return dataclasses.replace(key, access=key_access) if key_access else key


def _ignore_progress(stage: str, done: int, total: int) -> None:
    del stage, done, total


async def list_fleet(
    readers: Readers, *, subscriptions: Sequence[str] | None = None, on_page: PageCallback | None = None
) -> tuple[list[Namespace], list[str], list[BlindSpot]]:
    """Every CMK namespace of the subscriptions (all visible ones when None), the subscriptions read,
    and the subscriptions that could not be listed."""
    if subscriptions is None:
        try:
            subscriptions = await readers.inventory.list_subscriptions()
        except ReadError as failure:
            return [], [], [BlindSpot(BlindScope.SUBSCRIPTION, "*", failure.reason)]
    listing = await readers.inventory.list_namespaces_in(subscriptions, on_page=on_page)
    blind = [BlindSpot(BlindScope.SUBSCRIPTION, sub, reason) for sub, reason in listing.blind.items()]
    return listing.namespaces, list(subscriptions), blind


async def read_snapshot(
    readers: Readers,
    *,
    subscriptions: Sequence[str] | None = None,
    concurrency: int = 32,
    progress: ProgressCallback = _ignore_progress,
    listed: Callable[[Sequence[Namespace]], None] | None = None,
    ahead: JudgeAhead | None = None,
) -> Snapshot:
    """Read every CMK namespace, the vaults and keys they list, and who may use them.

    Never raises for what it could not read: each such thing becomes a BlindSpot in the snapshot.
    Each distinct key is read once, however many namespaces list it (twice when a page pins a version of it
    after an earlier page had its read under way without that version). `listed` is told the namespaces once
    they are listed, before their keys are read. `ahead` judges pages of them while the rest are listed.
    """
    semaphore = asyncio.Semaphore(concurrency)
    known = readers.keys.revalidatable()
    early: _EarlyReads | None = None
    if known:
        if subscriptions is None:
            try:
                subscriptions = await readers.inventory.list_subscriptions()
            except ReadError as failure:
                progress("namespaces", 0, 0)
                return Snapshot(blind=(BlindSpot(BlindScope.SUBSCRIPTION, "*", failure.reason),))
        early = _EarlyReads.start(readers, known, subscriptions, semaphore)
    ahead = ahead if early is not None else None  # without reads under way, nothing is known to judge by
    prefetch = _KeyPrefetch(readers, semaphore, workers=max(1, concurrency), known=known)

    def on_page(namespaces: Sequence[Namespace]) -> None:
        prefetch.page(namespaces)
        if ahead is not None:
            ahead.page(namespaces)

    try:
        if ahead is not None and early is not None:
            ahead.start(early)
        namespaces, read_subscriptions, blind = await list_fleet(readers, subscriptions=subscriptions, on_page=on_page)
        prefetch.listed()
        if ahead is not None:
            ahead.page(None)
        progress("namespaces", len(namespaces), len(namespaces))
        if listed is not None:
            listed(namespaces)
        snapshot = await read_keys_of(
            readers,
            namespaces,
            subscriptions=read_subscriptions,
            concurrency=concurrency,
            progress=progress,
            semaphore=semaphore,
            early=early,
            prefetch=prefetch,
        )
        if ahead is not None:
            await ahead.settle()
    finally:
        await prefetch.close()
        if ahead is not None:
            await ahead.cancel()
        if early is not None:
            await early.cancel()
    return dataclasses.replace(snapshot, blind=(*blind, *snapshot.blind))


class _KeyPrefetch:
    """Reads the keys each inventory page names, while the next page is fetched, that no read under way
    covers (none in a first poll): its 50,000 key reads at 100,000 namespaces otherwise all wait for Resource
    Graph's 100 paced pages. `concurrency` workers, not a task a key; read_keys_of takes each read whose
    pinned versions are the ones it wants, and reads the rest itself."""

    def __init__(
        self, readers: Readers, semaphore: asyncio.Semaphore, *, workers: int, known: Mapping[str, Sequence[str]]
    ) -> None:
        self._readers = readers
        self._semaphore = semaphore
        self._known = {vault_id(uri): {name_id(name) for name in names} for uri, names in known.items()}
        self._asked: dict[KeyId, _WantedKey] = {}
        self._reads: dict[KeyId, asyncio.Future[Key | None]] = {}
        self._queue: asyncio.Queue[KeyId | None] = asyncio.Queue()
        self._workers = [asyncio.ensure_future(self._work()) for _ in range(workers)]

    def page(self, namespaces: Sequence[Namespace]) -> None:
        new: dict[KeyId, _WantedKey] = {}
        for namespace in namespaces:
            for ref in namespace.keys:
                key_id = ref.key_id
                if key_id in self._asked or (not ref.version and key_id[1] in self._known.get(key_id[0], ())):
                    continue
                _want(new, ref)
        loop = asyncio.get_running_loop()
        for key_id, entry in new.items():
            self._asked[key_id] = entry
            self._reads[key_id] = loop.create_future()
            self._queue.put_nowait(key_id)

    def listed(self) -> None:
        """No page comes after: each worker stops once the reads asked for are under way."""
        for _ in self._workers:
            self._queue.put_nowait(None)

    def read(self, key_id: KeyId, pinned: frozenset[str]) -> asyncio.Future[Key | None] | None:
        """The read of `key_id` asked for with exactly these pinned versions, or None."""
        asked = self._asked.get(key_id)
        return self._reads[key_id] if asked is not None and asked.pinned == pinned else None

    async def _work(self) -> None:
        while (key_id := await self._queue.get()) is not None:
            entry, read = self._asked[key_id], self._reads[key_id]
            try:
                async with self._semaphore:
                    key = await self._readers.keys.get_key(
                        entry.vault_uri, entry.name, pinned_versions=sorted(entry.pinned)
                    )
            except Exception as error:  # read_keys_of judges it as its own read's
                read.set_exception(error)
            else:
                read.set_result(key)

    async def close(self) -> None:
        """Stop the reads nobody took (a deleted vault's keys are not wanted after all)."""
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for read in self._reads.values():
            if not read.done():
                read.cancel()
            elif not read.cancelled():
                read.exception()  # taken, so asyncio does not warn of one nobody wanted


class JudgeAhead:
    """Judges each page of the inventory while the next is fetched, and tells `judged` (the poll records them
    then): a steady poll's inventory is paced by Resource Graph's quota, and judging and recording 100,000
    namespaces after it was a third of the poll. Only namespaces whose every vault and key the reads begun
    before the listing confirmed (no pinned version) are judged; `result` is given to `evaluate`, which keeps
    each report only while the whole snapshot says the same of what it rested on."""

    def __init__(self, *, now: datetime, thresholds: Thresholds, judged: JudgedCallback) -> None:
        self._now = now
        self._thresholds = thresholds
        self._judged = judged
        self._pages: asyncio.Queue[Sequence[Namespace] | None] = asyncio.Queue()
        self._task: asyncio.Future[JudgedAhead | None] | None = None
        self.result: JudgedAhead | None = None

    def start(self, early: _EarlyReads) -> None:
        self._task = asyncio.ensure_future(self._run(early))

    def page(self, namespaces: Sequence[Namespace] | None) -> None:
        """A page's namespaces; None once the inventory is read."""
        self._pages.put_nowait(namespaces)

    async def settle(self) -> None:
        """Wait for every page to be judged and told; raises what `judged` raised."""
        if self._task is not None:
            self.result = await self._task

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self, early: _EarlyReads) -> JudgedAhead | None:
        try:
            vault_reading = await early.vaults
            listings = await asyncio.gather(*early.listings.values())
        except ReadError:
            return None  # the reads proper meet it, and say so
        vaults = {
            vid: vault
            for vid, vault in vault_reading.found.items()
            if vid in early.listings and not vault.deleted  # a deleted vault's keys are not read
        }
        keys: dict[KeyId, Key] = {}
        for vid, found in zip(early.listings, listings, strict=True):
            if vid in vaults:
                # What read_keys_of makes of a confirmed key, so the reports rest on what the snapshot holds.
                keys.update((key.id, _with_key_access(key, vault_reading, vid, name)) for name, key in found.items())
        basis = Snapshot(vaults=tuple(vaults.values()), keys=tuple(keys.values()))
        scenario = Scenario(now=self._now, snapshot=basis)
        judge = NamespaceJudge(scenario, self._thresholds)
        reports: dict[str, NamespaceReport] = {}
        while (page := await self._pages.get()) is not None:
            judged: list[NamespaceReport] = []
            for namespace in page:
                if namespace.id in reports or not all(
                    not ref.version and ref.key_id in keys and vault_id(ref.vault) in vaults for ref in namespace.keys
                ):
                    continue
                judged.append(report := judge.report(namespace))
                reports[namespace.id] = report
                if len(judged) % JUDGED_BETWEEN_YIELDS == 0:
                    await asyncio.sleep(0)
            if judged:
                await self._judged(judged)
        return JudgedAhead(now=self._now, horizon=scenario.effective_horizon, basis=basis, reports=reports)


@dataclass(frozen=True, slots=True)
class _EarlyReads:
    """What read_snapshot starts before the fleet is listed, for the vaults whose keys earlier polls read (here,
    or recalled from another instance): their key listings and their access, read while the inventory is, so a
    steady poll waits for the inventory, not for it and then them. A vault new to the poll is read after it."""

    listings: Mapping[str, asyncio.Future[dict[str, Key]]]  # by vault_id: revalidations of the known keys
    vaults: asyncio.Future[VaultReading]  # the access of every vault in `listings`

    @classmethod
    def start(
        cls,
        readers: Readers,
        known: Mapping[str, Sequence[str]],
        subscriptions: Sequence[str],
        semaphore: asyncio.Semaphore,
    ) -> _EarlyReads:
        listings = {
            vault_id(uri): asyncio.ensure_future(_bounded(semaphore, readers.keys.revalidate(uri, list(names))))
            for uri, names in known.items()
        }
        vaults = asyncio.ensure_future(readers.access.read_vaults(list(known), subscriptions=list(subscriptions)))
        return cls(listings, vaults)

    def covers(self, vault_ids: Iterable[str]) -> bool:
        return all(vid in self.listings for vid in vault_ids)

    async def cancel(self) -> None:
        """Stop what is still under way (nothing is left running after the read that started it)."""
        pending: list[asyncio.Future[Any]] = [*self.listings.values(), self.vaults]
        for work in pending:
            work.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def _bounded(semaphore: asyncio.Semaphore, work: Awaitable[T]) -> T:
    async with semaphore:
        return await work


async def read_keys_of(
    readers: Readers,
    namespaces: Sequence[Namespace],
    *,
    subscriptions: Sequence[str],
    concurrency: int = 32,
    progress: ProgressCallback = _ignore_progress,
    semaphore: asyncio.Semaphore | None = None,
    early: _EarlyReads | None = None,
    prefetch: _KeyPrefetch | None = None,
) -> Snapshot:
    """The snapshot of `namespaces`: the vaults and keys they list, read now (blind spots included).

    `early`: read_snapshot's reads under way: each listing is used for its vault, the vault reading when it
    covers every vault the namespaces list. `prefetch`: its key reads, used where they asked the same.
    """
    blind: list[BlindSpot] = []
    vault_uris: dict[str, str] = {}
    wanted: dict[KeyId, _WantedKey] = {}
    for namespace in namespaces:
        for ref in namespace.keys:
            vault_uris.setdefault(vault_id(ref.vault), ref.vault)
            _want(wanted, ref)

    if early is not None and early.covers(vault_uris):
        vault_reading = await early.vaults
    else:
        vault_reading = await readers.access.read_vaults(list(vault_uris.values()), subscriptions=subscriptions)
    vaults: list[Vault] = []
    for vid, uri in vault_uris.items():
        if vid in vault_reading.found:
            vaults.append(vault_reading.found[vid])
        else:
            # Listed so the snapshot stays well formed; the blind spot makes it unknown, not a default.
            vaults.append(Vault(uri=uri))
            blind.append(BlindSpot(BlindScope.VAULT, uri, vault_reading.blind.get(vid, "not read")))
    deleted_vaults = {vid for vid, vault in vault_reading.found.items() if vault.deleted}

    # A deleted vault's data plane is unreachable and its keys unusable anyway: do not ask.
    to_read = [(key_id, entry) for key_id, entry in wanted.items() if key_id[0] not in deleted_vaults]
    semaphore = semaphore or asyncio.Semaphore(concurrency)
    early_listings = early.listings if early is not None else {}

    # Keys read in full by an earlier poll and unchanged since are confirmed in bulk (a listing page covers
    # many keys); a pinned version can change without its key changing, so those are always read.
    by_vault: dict[str, list[str]] = {}
    for key_id, entry in to_read:
        # A key the prefetch is reading in full needs no listing to vouch for it (it would list a vault it just read).
        if not entry.pinned and (prefetch is None or prefetch.read(key_id, entry.pinned) is None):
            by_vault.setdefault(entry.vault_uri, []).append(entry.name)

    async def revalidate(uri: str, names: list[str]) -> dict[str, Key]:
        early = early_listings.get(vault_id(uri))
        if early is not None:
            # It confirmed the keys known before the fleet was listed; a key new to this poll is read in full.
            found = await early
            return {name_id(name): found[name_id(name)] for name in names if name_id(name) in found}
        async with semaphore:
            return await readers.keys.revalidate(uri, names)

    confirmed: dict[KeyId, Key] = {}
    listings = await asyncio.gather(*(revalidate(uri, names) for uri, names in by_vault.items()))
    for uri, found in zip(by_vault, listings, strict=True):
        confirmed.update(((vault_id(uri), name), key) for name, key in found.items())

    # What the listings confirmed needs no request; the rest is read by at most `concurrency` workers, not a
    # task a key: 50,000 waiting tasks held a tenth of a 100,000-namespace poll's memory.
    results: list[Key | BaseException | None] = [confirmed.get(key_id) for key_id, _ in to_read]
    unread = [index for index, (key_id, _) in enumerate(to_read) if key_id not in confirmed]
    done = len(to_read) - len(unread)
    if done:
        progress("keys", done, len(to_read))

    next_unread = iter(unread)

    async def reader() -> None:
        nonlocal done
        for index in next_unread:
            key_id, entry = to_read[index]
            read = prefetch.read(key_id, entry.pinned) if prefetch is not None else None
            try:
                if read is not None:
                    results[index] = await asyncio.shield(read)  # the future stays for close() to account for
                else:
                    async with semaphore:
                        results[index] = await readers.keys.get_key(
                            entry.vault_uri, entry.name, pinned_versions=sorted(entry.pinned)
                        )
            except Exception as error:  # judged below with the rest, as gather would
                results[index] = error
            done += 1
            progress("keys", done, len(to_read))

    await asyncio.gather(*(reader() for _ in range(max(1, concurrency))))
    keys: list[Key] = []
    for (key_id, entry), result in zip(to_read, results, strict=True):
        if isinstance(result, ReadError):
            blind.append(BlindSpot(BlindScope.KEY, key_url(entry.vault_uri, entry.name), result.reason))
        elif isinstance(result, BaseException):
            raise result
        elif result is not None:
            keys.append(_with_key_access(result, vault_reading, key_id[0], name_id(entry.name)))
    return Snapshot(vaults=tuple(vaults), keys=tuple(keys), namespaces=tuple(namespaces), blind=tuple(blind))


async def check(
    readers: Readers,
    *,
    now: datetime,
    thresholds: Thresholds,
    subscriptions: Sequence[str] | None = None,
    concurrency: int = 32,
    progress: ProgressCallback = _ignore_progress,
    listed: Callable[[Sequence[Namespace]], None] | None = None,
    judged: JudgedCallback | None = None,
) -> tuple[Scenario, FleetReport]:
    """One fleet scan now: read, then predict and judge. Returns the scenario it read and the report.

    `judged` is told reports made while the fleet is still read (see JudgeAhead); the report returned holds
    them, the very objects, where they still hold, and is the one that counts.
    """
    # With the audit logs read, every namespace is judged once its observation is in: judging ahead of it would
    # be judging twice.
    observing = readers.observer is not None
    ahead = JudgeAhead(now=now, thresholds=thresholds, judged=judged) if judged is not None and not observing else None
    snapshot = await read_snapshot(
        readers, subscriptions=subscriptions, concurrency=concurrency, progress=progress, listed=listed, ahead=ahead
    )
    if readers.observer is not None:
        snapshot, _ = await observe_snapshot(readers.observer, snapshot, now=now)
    scenario = Scenario(now=now, snapshot=snapshot)
    return scenario, evaluate(scenario, thresholds, ahead=ahead.result if ahead is not None else None)


async def observe_snapshot(
    observer: AccessObserver, snapshot: Snapshot, *, now: datetime
) -> tuple[Snapshot, ObservationReading]:
    """`snapshot` with each namespace's observation of its own key accesses (unobserved where none came)."""
    reading = await observer.observe(snapshot, now=now)
    missing = Observation(unobserved="the audit logs were not read for it")
    namespaces = tuple(
        dataclasses.replace(n, observed=reading.observations.get(n.id, missing)) for n in snapshot.namespaces
    )
    return dataclasses.replace(snapshot, namespaces=namespaces), reading

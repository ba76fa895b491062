"""Reading the fleet: list the namespaces, read their vaults and keys into a snapshot (blind spots
included), then predict and judge it; `keyhealth check` is this alone, the poll and events build on it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from monitor.app.ports import AccessReader, InventoryReader, KeyReader, VaultReading
from monitor.domain.errors import ReadError
from monitor.domain.findings import Thresholds
from monitor.domain.fleet import FleetReport, evaluate
from monitor.domain.model import (
    BlindScope,
    BlindSpot,
    Key,
    KeyId,
    Namespace,
    Scenario,
    Snapshot,
    Vault,
    key_url,
    name_id,
    vault_id,
)

ProgressCallback = Callable[[str, int, int], None]  # (stage, done, total)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Readers:
    """The three reading ports a fleet scan needs."""

    inventory: InventoryReader
    keys: KeyReader
    access: AccessReader


@dataclass(frozen=True, slots=True)
class _WantedKey:
    vault_uri: str
    name: str
    pinned: frozenset[str]


def _ignore_progress(stage: str, done: int, total: int) -> None:
    del stage, done, total


async def list_fleet(
    readers: Readers, *, subscriptions: Sequence[str] | None = None
) -> tuple[list[Namespace], list[str], list[BlindSpot]]:
    """Every CMK namespace of the subscriptions (all visible ones when None), the subscriptions read,
    and the subscriptions that could not be listed."""
    if subscriptions is None:
        try:
            subscriptions = await readers.inventory.list_subscriptions()
        except ReadError as failure:
            return [], [], [BlindSpot(BlindScope.SUBSCRIPTION, "*", failure.reason)]
    listing = await readers.inventory.list_namespaces_in(subscriptions)
    blind = [BlindSpot(BlindScope.SUBSCRIPTION, sub, reason) for sub, reason in listing.blind.items()]
    return listing.namespaces, list(subscriptions), blind


async def read_snapshot(
    readers: Readers,
    *,
    subscriptions: Sequence[str] | None = None,
    concurrency: int = 32,
    progress: ProgressCallback = _ignore_progress,
    listed: Callable[[Sequence[Namespace]], None] | None = None,
) -> Snapshot:
    """Read every CMK namespace, the vaults and keys they list, and who may use them.

    Never raises for what it could not read: each such thing becomes a BlindSpot in the snapshot.
    Each distinct key is read once, however many namespaces list it. `listed` is told the namespaces once
    they are listed, before their keys are read.
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
    try:
        namespaces, read_subscriptions, blind = await list_fleet(readers, subscriptions=subscriptions)
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
        )
    finally:
        if early is not None:
            await early.cancel()
    return dataclasses.replace(snapshot, blind=(*blind, *snapshot.blind))


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
) -> Snapshot:
    """The snapshot of `namespaces`: the vaults and keys they list, read now (blind spots included).

    `early`: read_snapshot's reads under way: each listing is used for its vault, the vault reading when it
    covers every vault the namespaces list.
    """
    blind: list[BlindSpot] = []
    vault_uris: dict[str, str] = {}
    wanted: dict[KeyId, _WantedKey] = {}
    for namespace in namespaces:
        for ref in namespace.keys:
            vault_uris.setdefault(vault_id(ref.vault), ref.vault)
            entry = wanted.get(ref.key_id) or _WantedKey(ref.vault, ref.name, frozenset())
            if ref.version:
                entry = dataclasses.replace(entry, pinned=entry.pinned | {ref.version})
            wanted[ref.key_id] = entry

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
    for _, entry in to_read:
        if not entry.pinned:
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
            entry = to_read[index][1]
            try:
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
            key_access = vault_reading.key_access.get(key_id[0], {}).get(name_id(entry.name))
            keys.append(dataclasses.replace(result, access=key_access) if key_access else result)
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
) -> tuple[Scenario, FleetReport]:
    """One fleet scan now: read, then predict and judge. Returns the scenario it read and the report."""
    snapshot = await read_snapshot(
        readers, subscriptions=subscriptions, concurrency=concurrency, progress=progress, listed=listed
    )
    scenario = Scenario(now=now, snapshot=snapshot)
    return scenario, evaluate(scenario, thresholds)

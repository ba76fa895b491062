"""StateStore in Azure Table Storage (azure-data-tables, async): shared by every instance of the Functions app.

Tables (`prefix` + name, created when missing), as PartitionKey / RowKey: properties:

- namespaces: subscription id from the ARM id ("-" if none) / sha256(lower-cased ARM id): NamespaceId, Name,
  StatusNow, EvaluatedAt, KeyIds and IndexedKeyIds (JSON lists), Doc00… (zlib-compressed JSON document)
- keyindex: sha256(vault_id) / sha256(key name_id) "-" sha256(lower-cased ARM id): VaultId, KeyName,
  NamespaceId. One partition a vault answers namespaces_for_vault; a RowKey range answers namespaces_for_key.
- snapshot: "snapshot" / "head": Generation, TakenAt, Chunks, Sha256, Bytes; and
  "snapshot" / generation "-" chunk number: TakenAt, D00…D11 (pieces of the zlib-compressed JSON)
- events: "event" / sha256(event id): EventId, ProcessedAt
- incidents: sha256(lower-cased ARM id) / sha256(condition): NamespaceId, Condition, Open, Body00… (zlib JSON);
  and, in the same partition so one transaction writes both, the alert outbox:
  sha256(lower-cased ARM id) / "outbox-" + entry id: NamespaceId, Condition, Sink, CreatedAt, Attempts,
  NextAttemptAt, LastError, ClaimedBy, ClaimedUntil, Doc00… (zlib JSON). Draining reads the RowKey range of
  every partition: the table holds only incidents and the few entries not yet delivered.
- leases: "lease" / sha256(lease name): Name, Holder, ExpiresAt, Token (the fencing token; a released lease
  keeps its entity, Holder "", so the next token is still larger)
- marks: "poll" / "last-complete": Holder, At (the last complete poll: one small entity, read on its own)
- budgets: sha256(scope) / window start (UTC, "%Y%m%dT%H%M%S.%fZ", so text order is time order): Scope,
  WindowStart, Granted

RowKeys may not hold '/', '\\', '#' or '?', which ARM ids, key URLs and conditions do: keys are
SHA-256 digests and the original values ride along as properties. Binary properties stay under the
64 KiB property limit and entities under 1 MiB, so any document fits, however large, in pieces.

Concurrency: every read-modify-write is conditional on the ETag it read (create-only for new
records), and retried after a lost race with a random back-off. The key index cannot share a
transaction with the namespaces it indexes (other partitions), so it is kept in an order that never
loses the entry of a key a stored state lists (TableStateStore._settle_index); an entry it may
briefly hold too many is never answered, because lookups confirm each candidate against its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from azure.core import MatchConditions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableEntity, TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from monitor.adapters.azure_clients import describe_failure
from monitor.app.state import (
    BUDGET_KEPT,
    Incident,
    Lease,
    NamespaceState,
    OutboxEntry,
    PollMark,
    StoredSnapshot,
    check_budget_request,
    check_outbox_of,
    namespace_key,
    utc,
)
from monitor.domain.errors import StaleWriteError, StateStoreError
from monitor.domain.model import KeyId, name_id, vault_id

__all__ = ["TableStateStore"]

T = TypeVar("T")

# Azure limits: 64 KiB a property, 1 MiB an entity. Pieces of 60,000 bytes, 12 to an entity, leave room
# for the keys and the other properties (and for Azurite, which enforces the property limit).
_PIECE = 60_000
_PIECES_PER_ENTITY = 12
_RACE_RETRIES = 8  # conditional writes re-read and try again this often before giving up
_SNAPSHOT_READS = 5  # a snapshot replaced while being read is read again this often
_PARTITION_SAFE = re.compile(r"^[0-9a-z-]{1,64}$")
_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,40}$")
_CONFLICTS = (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError)
_NO_ECHO = {"response_preference": "return-no-content"}  # inserts would otherwise send the entity back


async def _create_or_replace(client: TableClient, entity: dict[str, Any], etag: str | None) -> Any:
    """Insert `entity` (etag None) or replace it only while it is still at `etag`; conflicts raise _CONFLICTS."""
    if etag is None:
        return await client.create_entity(entity, **_NO_ECHO)
    return await client.update_entity(
        entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
    )


NAMESPACES, KEY_INDEX, SNAPSHOT, EVENTS, INCIDENTS, LEASES, MARKS, BUDGETS = (
    "namespaces",
    "keyindex",
    "snapshot",
    "events",
    "incidents",
    "leases",
    "marks",
    "budgets",
)
_TABLES = (NAMESPACES, KEY_INDEX, SNAPSHOT, EVENTS, INCIDENTS, LEASES, MARKS, BUDGETS)
_WINDOW_ROW = "%Y%m%dT%H%M%S.%fZ"
_POLL_MARK = ("poll", "last-complete")
_RELEASED = datetime(1970, 1, 1, tzinfo=UTC)  # a released lease's expiry: before any `now`
_SNAPSHOT_PARTITION = "snapshot"
_HEAD = "head"
_EVENT_PARTITION = "event"
_LEASE_PARTITION = "lease"
_OUTBOX_ROW = "outbox-"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _pieces(data: bytes, prefix: str, *, what: str) -> dict[str, bytes]:
    """`data` split into binary properties prefix00, prefix01, … that each fit the property limit."""
    pieces = [data[i : i + _PIECE] for i in range(0, len(data), _PIECE)] or [b""]
    if len(pieces) > _PIECES_PER_ENTITY:
        raise StateStoreError(what, f"{len(data)} compressed bytes do not fit one Table entity")
    return {f"{prefix}{n:02d}": piece for n, piece in enumerate(pieces)}


def _joined(entity: Mapping[str, Any], prefix: str) -> bytes:
    names = sorted(k for k in entity if k.startswith(prefix) and k[len(prefix) :].isdigit())
    return b"".join(bytes(entity[k]) for k in names)


def _pack(document: Mapping[str, Any]) -> bytes:
    return zlib.compress(json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), 6)


def _unpack(data: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(zlib.decompress(data).decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StateStoreError(what, f"stored document is unreadable: {error}") from error
    if not isinstance(document, dict):
        raise StateStoreError(what, "stored document is not a JSON object")
    return document


def _key_ids_json(key_ids: Iterable[KeyId]) -> str:
    return json.dumps(sorted([vault, name] for vault, name in key_ids))


def _key_ids_from(entity: Mapping[str, Any] | None, name: str) -> frozenset[KeyId]:
    if entity is None:
        return frozenset()
    return frozenset((str(vault), str(key)) for vault, key in json.loads(entity.get(name) or "[]"))


def _time(value: datetime) -> datetime:
    """A stored time as a plain UTC datetime (the SDK hands out its own datetime subclass)."""
    t = utc(value, "stored time")
    return datetime(t.year, t.month, t.day, t.hour, t.minute, t.second, t.microsecond, tzinfo=UTC)


def _etag(metadata: Mapping[str, Any]) -> str:
    return str(metadata["etag"])


async def _back_off(attempt: int) -> None:
    """Wait a random while before retry `attempt` (none before the first), so racing writers spread out."""
    if attempt:
        await asyncio.sleep(random.uniform(0, 0.02 * 2**attempt))  # noqa: S311 - jitter, not a secret


@contextlib.contextmanager
def _failures(what: str) -> Iterator[None]:
    """Azure failures other than the races each method handles, as StateStoreError (secret-free reasons)."""
    try:
        yield
    except AzureError as error:
        raise StateStoreError(what, describe_failure(error)) from error


def _public_url(url: str) -> str:
    """The account URL without its query: a SAS token there would be a secret."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class TableStateStore:
    """StateStore on Azure Table Storage (or Azurite): identity-based in Azure, connection string locally.

    `table_prefix` names this deployment's tables (letters and digits), so environments can share an
    account; `concurrency` bounds the requests one batch keeps in flight.
    """

    def __init__(self, service: TableServiceClient, *, table_prefix: str = "keyhealth", concurrency: int = 16) -> None:
        if not _PREFIX.match(table_prefix):
            raise ValueError(f"table_prefix must be a letter then up to 40 letters or digits, got {table_prefix!r}")
        self._service = service
        self._prefix = table_prefix
        self._semaphore = asyncio.Semaphore(concurrency)
        self._clients: dict[str, TableClient] = {}
        self._ready = False
        self._ready_lock = asyncio.Lock()

    @classmethod
    def from_connection_string(
        cls, connection_string: str, *, table_prefix: str = "keyhealth", concurrency: int = 16, **client_kwargs: Any
    ) -> TableStateStore:
        """A store reached by a connection string (Azurite, or an account key). The string is never kept or shown."""
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
    ) -> TableStateStore:
        """A store reached with an identity (managed identity in Azure): needs *Storage Table Data Contributor*."""
        service = TableServiceClient(endpoint, credential=credential, **client_kwargs)
        return cls(service, table_prefix=table_prefix, concurrency=concurrency)

    def __repr__(self) -> str:
        # Never the credential or connection string: only where the tables are.
        return f"TableStateStore(endpoint={_public_url(self._service.url)!r}, table_prefix={self._prefix!r})"

    async def __aenter__(self) -> TableStateStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
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

    # -- namespace states and the key index

    @staticmethod
    def _namespace_partition(key: str) -> str:
        # By subscription: a fleet's namespaces spread over partitions, and a human can find them.
        parts = key.strip("/").split("/")
        if len(parts) > 1 and parts[0] == "subscriptions" and _PARTITION_SAFE.match(parts[1]):
            return parts[1]
        return "-"

    def _namespace_address(self, namespace_id: str) -> tuple[str, str]:
        key = namespace_key(namespace_id)
        return self._namespace_partition(key), _digest(key)

    def _state_entity(self, state: NamespaceState, indexed: frozenset[KeyId]) -> dict[str, Any]:
        partition, row = self._namespace_address(state.id)
        return {
            "PartitionKey": partition,
            "RowKey": row,
            "NamespaceId": state.id,
            "Name": state.name or "",
            "StatusNow": state.status_now or "",
            "EvaluatedAt": state.evaluated_at,
            "KeyIds": _key_ids_json(state.key_ids),
            # Every key that may have an index entry for this namespace: what a later write must clean up.
            "IndexedKeyIds": _key_ids_json(indexed),
            **_pieces(_pack(state.document), "Doc", what=f"namespace {state.id}"),
        }

    @staticmethod
    def _state_from(entity: Mapping[str, Any]) -> NamespaceState:
        what = f"namespace {entity.get('NamespaceId')}"
        return NamespaceState(
            document=_unpack(_joined(entity, "Doc"), what),
            evaluated_at=_time(entity["EvaluatedAt"]),
            key_ids=_key_ids_from(entity, "KeyIds"),
        )

    def _index_address(self, key_id: KeyId, namespace: str) -> tuple[str, str]:
        vault, name = key_id
        return _digest(vault), f"{_digest(name)}-{_digest(namespace_key(namespace))}"

    async def _add_index(self, namespace_id: str, key_ids: Iterable[KeyId]) -> None:
        client = await self._table(KEY_INDEX)

        async def add(key_id: KeyId) -> None:
            partition, row = self._index_address(key_id, namespace_id)
            entity = {
                "PartitionKey": partition,
                "RowKey": row,
                "VaultId": key_id[0],
                "KeyName": key_id[1],
                "NamespaceId": namespace_id,
            }
            with _failures(f"index namespace {namespace_id}"):
                await client.upsert_entity(entity, mode=UpdateMode.REPLACE)

        await asyncio.gather(*(add(key_id) for key_id in key_ids))  # at most three: unbounded is fine

    async def _remove_index(self, namespace_id: str, key_ids: Iterable[KeyId]) -> None:
        client = await self._table(KEY_INDEX)

        async def remove(key_id: KeyId) -> None:
            partition, row = self._index_address(key_id, namespace_id)
            with _failures(f"unindex namespace {namespace_id}"):
                await client.delete_entity(partition, row)  # a missing entity is not an error

        await asyncio.gather(*(remove(key_id) for key_id in key_ids))

    async def _settle_index(self, namespace_id: str, candidates: frozenset[KeyId]) -> None:
        """Leave the index holding the keys the stored state lists, and forget the rest of `candidates`.

        Every writer adds its keys' entries only after storing its state, then runs this. Each round
        removes what the state read does not list, puts back what it does (another settler, working
        from an older read, may have removed it), and ends only when the state did not change
        meanwhile; then it narrows IndexedKeyIds to the keys, so later writes need not clean up. So
        once every writer has finished, no listed key lacks its entry. Removal can lose a race with a
        superseded writer's late addition: such an extra entry is harmless, as lookups confirm
        each candidate against its state, and goes with the namespace's next key change.
        """
        partition, row = self._namespace_address(namespace_id)
        what = f"index of namespace {namespace_id}"
        for attempt in range(_RACE_RETRIES):
            await _back_off(attempt)
            current = await self._get(NAMESPACES, partition, row, what=what)
            keys = _key_ids_from(current, "KeyIds")
            indexed = _key_ids_from(current, "IndexedKeyIds")
            await self._remove_index(namespace_id, (candidates | indexed) - keys)
            if current is not None:
                await self._add_index(str(current["NamespaceId"]), keys)
            again = await self._get(NAMESPACES, partition, row, what=what)
            if again is None and current is None:
                return  # gone, and nobody put it back: a later put adds its own entries after this
            if again is None or current is None or _etag(again.metadata) != _etag(current.metadata):
                continue  # someone wrote meanwhile: settle against what they stored
            if indexed == keys:
                return
            narrowed = dict(current)
            narrowed["IndexedKeyIds"] = _key_ids_json(keys)
            client = await self._table(NAMESPACES)
            with _failures(what):
                try:
                    await client.update_entity(
                        narrowed,
                        mode=UpdateMode.REPLACE,
                        etag=_etag(current.metadata),
                        match_condition=MatchConditions.IfNotModified,
                    )
                except _CONFLICTS:
                    continue
            return
        # Writers keep coming. Removing nothing more, make sure what the state lists now is indexed: any state
        # stored after this read gets its entries from its own writer, after all our removals.
        current = await self._get(NAMESPACES, partition, row, what=what)
        if current is not None:
            await self._add_index(str(current["NamespaceId"]), _key_ids_from(current, "KeyIds"))

    async def _put_state(self, state: NamespaceState) -> bool:
        partition, row = self._namespace_address(state.id)
        client = await self._table(NAMESPACES)
        what = f"namespace {state.id}"
        for attempt in range(_RACE_RETRIES):
            await _back_off(attempt)
            current = await self._get(NAMESPACES, partition, row, what=what)
            if current is not None and current["EvaluatedAt"] > state.evaluated_at:
                return False
            old_keys = _key_ids_from(current, "KeyIds")
            old_indexed = _key_ids_from(current, "IndexedKeyIds") | old_keys
            indexed = old_indexed | state.key_ids
            entity = self._state_entity(state, indexed)
            with _failures(what):
                try:
                    await _create_or_replace(client, entity, None if current is None else _etag(current.metadata))
                except _CONFLICTS:
                    continue  # someone wrote this namespace since we read it: judge again
            if old_keys == old_indexed == state.key_ids:
                return True  # the index already holds exactly these keys
            await self._add_index(state.id, state.key_ids)
            await self._settle_index(state.id, indexed)
            return True
        raise StateStoreError(what, f"still contended after {_RACE_RETRIES} tries")

    async def put_namespace_states(self, states: Iterable[NamespaceState]) -> list[str]:
        latest: dict[str, NamespaceState] = {}
        for state in states:
            previous = latest.get(state.key)
            if previous is None or state.evaluated_at >= previous.evaluated_at:
                latest[state.key] = state
        written = await self._gather(self._put_state(state) for state in latest.values())
        return sorted((s.id for s, ok in zip(latest.values(), written, strict=True) if not ok), key=namespace_key)

    async def get_namespace_state(self, namespace_id: str) -> NamespaceState | None:
        partition, row = self._namespace_address(namespace_id)
        entity = await self._get(NAMESPACES, partition, row, what=f"namespace {namespace_id}")
        return None if entity is None else self._state_from(entity)

    async def list_namespace_states(self) -> list[NamespaceState]:
        client = await self._table(NAMESPACES)
        with _failures("list namespaces"):
            entities = [entity async for entity in client.list_entities()]
        return sorted((self._state_from(e) for e in entities), key=lambda s: s.key)

    async def delete_namespace_state(self, namespace_id: str) -> bool:
        partition, row = self._namespace_address(namespace_id)
        client = await self._table(NAMESPACES)
        what = f"namespace {namespace_id}"
        for attempt in range(_RACE_RETRIES):
            await _back_off(attempt)
            current = await self._get(NAMESPACES, partition, row, what=what)
            if current is None:
                return False
            with _failures(what):
                try:
                    await client.delete_entity(
                        partition, row, etag=_etag(current.metadata), match_condition=MatchConditions.IfNotModified
                    )
                except _CONFLICTS:
                    continue
            indexed = _key_ids_from(current, "IndexedKeyIds") | _key_ids_from(current, "KeyIds")
            await self._settle_index(str(current["NamespaceId"]), indexed)
            return True
        raise StateStoreError(what, f"still contended after {_RACE_RETRIES} tries")

    async def _confirmed(self, entries: Iterable[Mapping[str, Any]], listed: Callable[[KeyId], bool]) -> list[str]:
        """Ids of the namespaces behind index `entries` whose stored state lists a key for which `listed` holds.

        The index may briefly hold more than the states do (see _settle_index); the state decides.
        """
        candidates = {namespace_key(str(e["NamespaceId"])): str(e["NamespaceId"]) for e in entries}

        async def confirm(namespace_id: str) -> str | None:
            partition, row = self._namespace_address(namespace_id)
            client = await self._table(NAMESPACES)
            with _failures(f"namespace {namespace_id}"):
                try:
                    entity = await client.get_entity(partition, row, select=["NamespaceId", "KeyIds"])
                except ResourceNotFoundError:
                    return None
            return str(entity["NamespaceId"]) if any(map(listed, _key_ids_from(entity, "KeyIds"))) else None

        confirmed = await self._gather(confirm(namespace_id) for namespace_id in candidates.values())
        return sorted((c for c in confirmed if c is not None), key=namespace_key)

    async def namespaces_for_key(self, vault_uri: str, key_name: str) -> list[str]:
        wanted = (vault_id(vault_uri), name_id(key_name))
        key_hash = _digest(wanted[1])
        entries = await self._query(
            KEY_INDEX,
            "PartitionKey eq @vault and RowKey ge @low and RowKey lt @high",
            what=f"namespaces for key {key_name}",
            vault=_digest(wanted[0]),
            low=f"{key_hash}-",
            high=f"{key_hash}.",  # '.' sorts right after '-': the range is every row starting key_hash-
        )
        return await self._confirmed(entries, lambda key_id: key_id == wanted)

    async def namespaces_for_vault(self, vault_uri: str) -> list[str]:
        wanted = vault_id(vault_uri)
        entries = await self._query(
            KEY_INDEX, "PartitionKey eq @vault", what=f"namespaces for vault {vault_uri}", vault=_digest(wanted)
        )
        return await self._confirmed(entries, lambda key_id: key_id[0] == wanted)

    # -- snapshot: chunks of one generation, then a head entity that points at them

    async def put_snapshot(self, document: Mapping[str, Any], *, taken_at: datetime) -> bool:
        taken = utc(taken_at, "taken_at")
        head = await self._get(SNAPSHOT, _SNAPSHOT_PARTITION, _HEAD, what="snapshot")
        if head is not None and head["TakenAt"] > taken:
            return False
        data = await asyncio.to_thread(_pack, document)
        generation = uuid.uuid4().hex
        client = await self._table(SNAPSHOT)
        per_entity = _PIECE * _PIECES_PER_ENTITY
        chunks = [data[i : i + per_entity] for i in range(0, len(data), per_entity)]

        async def write_chunk(number: int, chunk: bytes) -> None:
            entity = {
                "PartitionKey": _SNAPSHOT_PARTITION,
                "RowKey": f"{generation}-{number:05d}",
                "TakenAt": taken,
                **_pieces(chunk, "D", what="snapshot"),
            }
            with _failures("snapshot"):
                await client.upsert_entity(entity, mode=UpdateMode.REPLACE)

        await self._gather(write_chunk(n, chunk) for n, chunk in enumerate(chunks))
        new_head = {
            "PartitionKey": _SNAPSHOT_PARTITION,
            "RowKey": _HEAD,
            "Generation": generation,
            "TakenAt": taken,
            "Chunks": len(chunks),
            "Sha256": hashlib.sha256(data).hexdigest(),
            "Bytes": len(data),
        }
        # Readers follow the head, so flipping it publishes the whole new snapshot at once.
        for attempt in range(_RACE_RETRIES):
            await _back_off(attempt)
            with _failures("snapshot"):
                try:
                    await _create_or_replace(client, new_head, None if head is None else _etag(head.metadata))
                    break
                except _CONFLICTS:
                    head = await self._get(SNAPSHOT, _SNAPSHOT_PARTITION, _HEAD, what="snapshot")
                    if head is not None and head["TakenAt"] > taken:
                        await self._delete_chunks(lambda g, t: g == generation)
                        return False
        else:
            raise StateStoreError("snapshot", f"still contended after {_RACE_RETRIES} tries")
        previous = None if head is None else str(head["Generation"])
        # The replaced generation, and orphans of writers that died (or lost) with older snapshots.
        await self._delete_chunks(lambda g, t: g != generation and (g == previous or t < taken))
        return True

    async def _delete_chunks(self, doomed: Callable[[str, datetime], bool]) -> None:
        """Delete the snapshot chunks for which doomed(generation, taken_at) holds."""
        client = await self._table(SNAPSHOT)
        with _failures("snapshot"):
            rows = [
                entity
                async for entity in client.query_entities(
                    "PartitionKey eq @p and RowKey ne @head",
                    parameters={"p": _SNAPSHOT_PARTITION, "head": _HEAD},
                    select=["RowKey", "TakenAt"],
                )
            ]

        async def delete(row: str) -> None:
            with _failures("snapshot"):
                await client.delete_entity(_SNAPSHOT_PARTITION, row)

        await self._gather(
            delete(str(e["RowKey"])) for e in rows if doomed(str(e["RowKey"]).split("-", 1)[0], e["TakenAt"])
        )

    async def get_snapshot(self) -> StoredSnapshot | None:
        for _ in range(_SNAPSHOT_READS):
            head = await self._get(SNAPSHOT, _SNAPSHOT_PARTITION, _HEAD, what="snapshot")
            if head is None:
                return None
            generation = str(head["Generation"])
            chunks = await self._query(
                SNAPSHOT,
                "PartitionKey eq @p and RowKey ge @low and RowKey lt @high",
                what="snapshot",
                p=_SNAPSHOT_PARTITION,
                low=f"{generation}-",
                high=f"{generation}.",
            )
            chunks.sort(key=lambda e: str(e["RowKey"]))
            data = b"".join(_joined(chunk, "D") for chunk in chunks)
            if len(chunks) == head["Chunks"] and hashlib.sha256(data).hexdigest() == head["Sha256"]:
                document = await asyncio.to_thread(_unpack, data, "snapshot")
                return StoredSnapshot(document=document, taken_at=_time(head["TakenAt"]))
            # A newer snapshot replaced this one (and removed its chunks) while we read: follow the new head.
        raise StateStoreError("snapshot", f"changed or incomplete on {_SNAPSHOT_READS} reads in a row")

    # -- the last complete poll

    async def record_poll_completed(self, holder: str, *, at: datetime) -> None:
        at = utc(at, "at")
        client = await self._table(MARKS)
        partition, row = _POLL_MARK
        entity = {"PartitionKey": partition, "RowKey": row, "Holder": holder, "At": at}
        for attempt in range(_RACE_RETRIES):
            await _back_off(attempt)
            current = await self._get(MARKS, partition, row, what="poll mark")
            if current is not None and current["At"] > at:
                return  # a later poll's mark is stored: keep it
            with _failures("poll mark"):
                try:
                    await _create_or_replace(client, entity, None if current is None else _etag(current.metadata))
                    return
                except _CONFLICTS:
                    continue  # another instance wrote a mark since we read it: compare with that one
        raise StateStoreError("poll mark", f"still contended after {_RACE_RETRIES} tries")

    async def last_poll_completed(self) -> PollMark | None:
        entity = await self._get(MARKS, *_POLL_MARK, what="poll mark")
        return None if entity is None else PollMark(holder=str(entity["Holder"]), at=_time(entity["At"]))

    # -- events

    async def mark_event_processed(self, event_id: str, *, at: datetime) -> bool:
        client = await self._table(EVENTS)
        entity = {
            "PartitionKey": _EVENT_PARTITION,
            "RowKey": _digest(event_id),
            "EventId": event_id,
            "ProcessedAt": utc(at, "at"),
        }
        with _failures(f"event {event_id}"):
            try:
                await client.create_entity(entity, **_NO_ECHO)  # insert-only: the service lets one caller win
            except ResourceExistsError:
                return False
        return True

    async def purge_processed_events(self, *, before: datetime) -> int:
        old = await self._query(
            EVENTS,
            "PartitionKey eq @p and ProcessedAt lt @before",
            what="purge events",
            p=_EVENT_PARTITION,
            before=utc(before, "before"),
        )
        client = await self._table(EVENTS)

        async def delete(row: str) -> None:
            with _failures("purge events"):
                await client.delete_entity(_EVENT_PARTITION, row)

        await self._gather(delete(str(e["RowKey"])) for e in old)
        return len(old)

    # -- incidents

    @staticmethod
    def _incident_address(namespace_id: str, condition: str) -> tuple[str, str]:
        return _digest(namespace_key(namespace_id)), _digest(condition)

    @staticmethod
    def _incident_from(entity: TableEntity) -> Incident:
        what = f"incident {entity.get('Condition')!r} of {entity.get('NamespaceId')}"
        return Incident(
            namespace_id=str(entity["NamespaceId"]),
            condition=str(entity["Condition"]),
            body=_unpack(_joined(entity, "Body"), what),
            open=bool(entity["Open"]),
            etag=_etag(entity.metadata),
        )

    async def get_incident(self, namespace_id: str, condition: str) -> Incident | None:
        partition, row = self._incident_address(namespace_id, condition)
        entity = await self._get(INCIDENTS, partition, row, what=f"incident {condition!r} of {namespace_id}")
        return None if entity is None else self._incident_from(entity)

    async def list_incidents(self, *, open_only: bool = False) -> list[Incident]:
        if open_only:
            entities = await self._query(INCIDENTS, "Open eq @open", what="list incidents", open=True)
        else:  # incident RowKeys are hex digests: below "g", apart from the outbox's
            entities = await self._query(INCIDENTS, "RowKey lt @end", what="list incidents", end="g")
        return sorted((self._incident_from(e) for e in entities), key=lambda i: i.key)

    async def put_incident(
        self, incident: Incident, *, expected_etag: str | None = None, outbox: Sequence[OutboxEntry] = ()
    ) -> Incident:
        check_outbox_of(incident, outbox)
        partition, row = self._incident_address(incident.namespace_id, incident.condition)
        what = f"incident {incident.condition!r} of {incident.namespace_id}"
        entity = {
            "PartitionKey": partition,
            "RowKey": row,
            "NamespaceId": incident.namespace_id,
            "Condition": incident.condition,
            "Open": incident.open,
            **_pieces(_pack(incident.body), "Body", what=what),
        }
        client = await self._table(INCIDENTS)
        if not outbox:
            with _failures(what):
                try:
                    written = await _create_or_replace(client, entity, expected_etag)
                except ResourceExistsError:
                    raise StaleWriteError(what, expected_etag, "it exists") from None
                except ResourceModifiedError:
                    raise StaleWriteError(what, expected_etag, "it has changed") from None
                except ResourceNotFoundError:
                    raise StaleWriteError(what, expected_etag, "there is none") from None
            etag = _etag(written)
        else:
            # One entity-group transaction (same partition): the incident and its notifications, or nothing.
            first: tuple[str, dict[str, Any], dict[str, Any]] = (
                ("create", entity, {})
                if expected_etag is None
                else (
                    "update",
                    entity,
                    {
                        "mode": UpdateMode.REPLACE,
                        "etag": expected_etag,
                        "match_condition": MatchConditions.IfNotModified,
                    },
                )
            )
            operations = [first, *(("create", self._outbox_entity(entry), {}) for entry in outbox)]
            with _failures(what):
                try:
                    results = await client.submit_transaction(operations)
                except TableTransactionError as error:
                    if error.index == 0 and error.status_code in {404, 409, 412}:
                        reason = {404: "there is none", 409: "it exists", 412: "it has changed"}[error.status_code]
                        raise StaleWriteError(what, expected_etag, reason) from None
                    raise
            etag = _etag(results[0])
        return Incident(
            namespace_id=incident.namespace_id,
            condition=incident.condition,
            body=incident.body,
            open=incident.open,
            etag=etag,
        )

    # -- the alert outbox

    def _outbox_address(self, entry: OutboxEntry) -> tuple[str, str]:
        return _digest(namespace_key(entry.namespace_id)), f"{_OUTBOX_ROW}{entry.id}"

    def _outbox_entity(self, entry: OutboxEntry) -> dict[str, Any]:
        partition, row = self._outbox_address(entry)
        return {
            "PartitionKey": partition,
            "RowKey": row,
            "NamespaceId": entry.namespace_id,
            "Condition": entry.condition,
            "Sink": entry.sink,
            "CreatedAt": entry.created_at,
            "Attempts": entry.attempts,
            "NextAttemptAt": entry.next_attempt_at,
            "LastError": entry.last_error,
            # "" and the epoch for none: a property left out of a replace is gone, but None is never sent.
            "ClaimedBy": entry.claimed_by or "",
            "ClaimedUntil": entry.claimed_until or _RELEASED,
            **_pieces(_pack(entry.document), "Doc", what=f"alert {entry.id}"),
        }

    @staticmethod
    def _outbox_from(e: TableEntity) -> OutboxEntry:
        claimed_by = str(e.get("ClaimedBy") or "") or None
        return OutboxEntry(
            id=str(e["RowKey"]).removeprefix(_OUTBOX_ROW),
            namespace_id=str(e["NamespaceId"]),
            condition=str(e["Condition"]),
            sink=str(e["Sink"]),
            created_at=_time(e["CreatedAt"]),
            attempts=int(e.get("Attempts") or 0),
            next_attempt_at=_time(e["NextAttemptAt"]) if e.get("NextAttemptAt") else None,
            last_error=str(e["LastError"]) if e.get("LastError") else None,
            document=_unpack(_joined(e, "Doc"), f"alert {e['RowKey']}"),
            claimed_by=claimed_by,
            claimed_until=_time(e["ClaimedUntil"]) if claimed_by and e.get("ClaimedUntil") else None,
            etag=_etag(e.metadata),
        )

    async def list_outbox(self) -> list[OutboxEntry]:
        entities = await self._query(
            INCIDENTS, "RowKey ge @start and RowKey lt @end", what="list outbox", start=_OUTBOX_ROW, end="outbox."
        )
        return sorted((self._outbox_from(e) for e in entities), key=lambda entry: entry.id)

    async def _replace_outbox(self, entry: OutboxEntry) -> str | None:
        """Replace the stored entry with `entry` (only at entry.etag, when given): its new etag, or None when it is
        gone or changed. An update without an etag is sent with If-Match "*", so a deleted entry never returns."""
        client = await self._table(INCIDENTS)
        condition: dict[str, Any] = {}
        if entry.etag is not None:
            condition = {"etag": entry.etag, "match_condition": MatchConditions.IfNotModified}
        with _failures(f"alert {entry.id}"):
            try:
                written = await client.update_entity(self._outbox_entity(entry), mode=UpdateMode.REPLACE, **condition)
            except (ResourceNotFoundError, ResourceModifiedError):
                return None
        return _etag(written)

    async def claim_outbox_entry(self, entry: OutboxEntry, *, holder: str, until: datetime) -> OutboxEntry | None:
        if entry.etag is None:
            raise ValueError(f"alert {entry.id} has no etag: claim an entry as list_outbox returned it")
        claimed = replace(entry, claimed_by=holder, claimed_until=utc(until, "until"))
        etag = await self._replace_outbox(claimed)
        return None if etag is None else replace(claimed, etag=etag)

    async def update_outbox_entry(self, entry: OutboxEntry) -> bool:
        return await self._replace_outbox(replace(entry, claimed_by=None, claimed_until=None)) is not None

    async def delete_outbox_entry(self, entry: OutboxEntry) -> bool:
        partition, row = self._outbox_address(entry)
        client = await self._table(INCIDENTS)
        with _failures(f"alert {entry.id}"):
            etag = entry.etag
            if etag is None:
                existing = await self._get(INCIDENTS, partition, row, what=f"alert {entry.id}")
                if existing is None:
                    return False
                etag = _etag(existing.metadata)
            # A transaction of one: delete_entity itself answers a missing entity as success, which would let
            # two deliverers both believe they removed it. Conditional even without the caller's etag.
            operation = (
                "delete",
                {"PartitionKey": partition, "RowKey": row},
                {"etag": etag, "match_condition": MatchConditions.IfNotModified},
            )
            try:
                await client.submit_transaction([operation])
            except TableTransactionError as error:
                if error.status_code in {404, 412}:
                    return False
                raise
        return True

    # -- shared budgets

    async def take_budget(self, scope: str, window_start: datetime, wanted: int, limit: int) -> int:
        check_budget_request(wanted, limit)
        window_start = utc(window_start, "window_start")
        partition, row = _digest(scope), window_start.strftime(_WINDOW_ROW)
        what = f"budget {scope}"
        client = await self._table(BUDGETS)
        for attempt in range(_RACE_RETRIES):
            await _back_off(attempt)
            current = await self._get(BUDGETS, partition, row, what=what)
            granted = 0 if current is None else int(current["Granted"])
            grant = max(0, min(wanted, limit - granted))
            if grant == 0 and current is not None:
                return 0
            entity = {
                "PartitionKey": partition,
                "RowKey": row,
                "Scope": scope,
                "WindowStart": window_start,
                "Granted": granted + grant,
            }
            with _failures(what):
                try:
                    await _create_or_replace(client, entity, None if current is None else _etag(current.metadata))
                except _CONFLICTS:
                    continue  # another instance took some since we read: read the window again
            if current is None:
                await self._forget_windows(partition, (window_start - BUDGET_KEPT).strftime(_WINDOW_ROW))
            return grant
        raise StateStoreError(what, f"still contended after {_RACE_RETRIES} tries")

    async def _forget_windows(self, partition: str, before: str) -> None:
        """Delete a scope's windows older than `before` (done by whoever opened a new one: a few a time)."""
        client = await self._table(BUDGETS)
        old = await self._query(
            BUDGETS, "PartitionKey eq @p and RowKey lt @before", what="budget windows", p=partition, before=before
        )

        async def delete(row: str) -> None:
            with _failures("budget windows"):
                await client.delete_entity(partition, row)

        await self._gather(delete(str(e["RowKey"])) for e in old)

    # -- leases

    async def _lease_entity(self, name: str) -> TableEntity | None:
        return await self._get(LEASES, _LEASE_PARTITION, _digest(name), what=f"lease {name}")

    async def _write_lease(
        self, name: str, holder: str, until: datetime, token: int, current: TableEntity | None
    ) -> bool:
        client = await self._table(LEASES)
        entity = {
            "PartitionKey": _LEASE_PARTITION,
            "RowKey": _digest(name),
            "Name": name,
            "Holder": holder,
            "ExpiresAt": until,
            "Token": token,
        }
        with _failures(f"lease {name}"):
            try:
                await _create_or_replace(client, entity, None if current is None else _etag(current.metadata))
            except _CONFLICTS:
                return False  # another instance changed the lease since we read it: it won
        return True

    async def acquire_lease(self, name: str, holder: str, duration: timedelta, *, now: datetime) -> Lease | None:
        now = utc(now, "now")
        current = await self._lease_entity(name)
        if current is None:
            token = 1
        else:
            held = bool(current["Holder"]) and current["ExpiresAt"] > now
            if held and current["Holder"] != holder:
                return None
            previous = int(current.get("Token") or 0)
            token = previous if held else previous + 1  # extending one's own keeps the token
        if not await self._write_lease(name, holder, now + duration, token, current):
            return None
        return Lease(name=name, holder=holder, expires_at=now + duration, token=token)

    async def renew_lease(
        self, name: str, holder: str, duration: timedelta, *, now: datetime, token: int
    ) -> Lease | None:
        now = utc(now, "now")
        current = await self._lease_entity(name)
        if (
            current is None
            or current["Holder"] != holder
            or int(current.get("Token") or 0) != token
            or current["ExpiresAt"] <= now
        ):
            return None
        if not await self._write_lease(name, holder, now + duration, token, current):
            return None
        return Lease(name=name, holder=holder, expires_at=now + duration, token=token)

    async def release_lease(self, name: str, holder: str, *, token: int | None = None) -> bool:
        current = await self._lease_entity(name)
        if current is None or not current["Holder"] or current["Holder"] != holder:
            return False
        stored = int(current.get("Token") or 0)
        if token is not None and stored != token:
            return False
        # Replaced (conditionally on what was read), not deleted: the token must keep growing.
        return await self._write_lease(name, "", _RELEASED, stored, current)

    async def get_lease(self, name: str) -> Lease | None:
        current = await self._lease_entity(name)
        if current is None or not current["Holder"]:
            return None
        return Lease(
            name=str(current["Name"]),
            holder=str(current["Holder"]),
            expires_at=_time(current["ExpiresAt"]),
            token=int(current.get("Token") or 0),
        )

    # -- for tests and tools

    async def entities(self, table: str) -> AsyncIterator[TableEntity]:
        """Every entity of one of the store's tables, as stored (for tests and diagnostics)."""
        client = await self._table(table)
        with _failures(f"list {table}"):
            async for entity in client.list_entities():
                yield entity

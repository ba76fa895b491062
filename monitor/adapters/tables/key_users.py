"""The key index on Table Storage: for each key, one document of the namespaces that list it, in its vault's
partition. Changes to it are merged and applied a partition at a time, each document conditioned on its ETag.

An entity an index entry (a key and a namespace) made a 100,000-namespace first poll write 300,000 entities
into 20 partitions: most of Table Storage's share of the poll, and, for a fleet on one vault, a partition past
Azure's 2,000 entities/s target for minutes. A document a key is one entity a key (more only for a key shared
by tens of thousands of namespaces), and a key's lookup is one small range query.
"""

from __future__ import annotations

import asyncio
import json
import uuid
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from azure.data.tables import TableEntity

from monitor.adapters.tables import wire
from monitor.adapters.tables.base import TableBase
from monitor.adapters.tables.codec import (
    _PIECE,
    _PIECES_PER_ENTITY,
    _RACE_RETRIES,
    _ROWS_PER_QUERY,
    _SNAPSHOT_READS,
    KEY_USERS,
    _back_off,
    _digest,
    _etag,
    _failures,
    _in_transactions,
    _joined,
    _pieces,
    _transact,
)
from monitor.app.state import namespace_key
from monitor.domain.errors import StateStoreError
from monitor.domain.model import KeyId

_HEADS_BY_ROWS_AT_MOST = 4 * _ROWS_PER_QUERY  # more documents than this wanted: one query of the partition
_PER_ROW = _PIECE * _PIECES_PER_ENTITY
_ROWS_AT_MOST = 4  # a document's rows go in one transaction: 4 x 720 KB, base64, stays under its 4 MiB

Change = tuple[KeyId, str, bool]  # a key, a namespace id, whether the namespace lists it (else: no longer)


@dataclass(slots=True)
class _Document:
    """A key's document as read: the head's ETag, and the namespaces it names (by namespace key)."""

    etag: str
    users: dict[str, str]


@dataclass(slots=True)
class _Pending:
    """Changes waiting for a partition's next round, by key then namespace key: (namespace id, listed); and
    the future that round resolves."""

    done: asyncio.Future[None]
    changes: dict[KeyId, dict[str, tuple[str, bool]]] = field(default_factory=dict)


def _head_row(key_id: KeyId) -> str:
    return _digest(key_id[1])


def _key_range(key_id: KeyId) -> str:
    """A filter of a key's rows in its vault's partition: the head, digest, and the rows digest-01…
    ('.' sorts right after '-'; digests are all 64 characters, so no other key's rows fall between)."""
    head, literal = _head_row(key_id), wire.literal
    return (
        f"PartitionKey eq {literal(_digest(key_id[0]))} and RowKey ge {literal(head)} "
        f"and RowKey lt {literal(head + '.')}"
    )


def _documents_from(entities: Iterable[TableEntity]) -> tuple[dict[KeyId, _Document], set[KeyId]]:
    """The documents `entities` hold, and the keys whose rows are of different writes (read again)."""
    heads: dict[str, TableEntity] = {}
    rows: dict[str, TableEntity] = {}
    for entity in entities:
        row = str(entity["RowKey"])
        (heads if "-" not in row else rows)[row] = entity
    documents: dict[KeyId, _Document] = {}
    torn: set[KeyId] = set()
    for row, head in heads.items():
        key_id = (str(head.get("VaultId")), str(head.get("KeyName")))
        count = int(head.get("Rows") or 1)
        parts = [head, *(rows.get(f"{row}-{n:02d}") for n in range(1, count))]
        if any(part is None or part.get("Generation") != head.get("Generation") for part in parts):
            torn.add(key_id)
            continue
        what = f"key index of {key_id[1]} in {key_id[0]}"
        try:
            ids = json.loads(zlib.decompress(b"".join(_joined(part, "N") for part in parts if part is not None)))
        except (zlib.error, ValueError) as error:
            raise StateStoreError(what, f"stored document is unreadable: {error}") from error
        if not isinstance(ids, list):
            raise StateStoreError(what, "stored document is not a list of namespaces")
        documents[key_id] = _Document(_etag(head.metadata), {namespace_key(str(i)): str(i) for i in ids})
    return documents, torn


def _operations(key_id: KeyId, document: _Document | None, users: Mapping[str, str]) -> list[wire.Operation]:
    """The writes that make `key_id`'s document name `users`: the head conditioned on what was read (created when
    there was none), its other rows in the same transaction, all of one new generation."""
    data = zlib.compress(json.dumps(sorted(users.values(), key=namespace_key)).encode(), 6)
    chunks = [data[i : i + _PER_ROW] for i in range(0, len(data), _PER_ROW)] or [b""]
    what = f"key index of {key_id[1]} in {key_id[0]}"
    if len(chunks) > _ROWS_AT_MOST:
        raise StateStoreError(what, f"{len(users)} namespaces list the key: more than one transaction holds")
    partition, head, generation = _digest(key_id[0]), _head_row(key_id), uuid.uuid4().hex
    operations: list[wire.Operation] = []
    for number, chunk in enumerate(chunks):
        entity: dict[str, Any] = {
            "PartitionKey": partition,
            "RowKey": head if number == 0 else f"{head}-{number:02d}",
            "Generation": generation,
            **_pieces(chunk, "N", what=what),
        }
        if number == 0:
            entity |= {"VaultId": key_id[0], "KeyName": key_id[1], "Rows": len(chunks)}
            operations.append(("create", entity, None) if document is None else ("update", entity, document.etag))
        else:
            # Rows a shrunk document no longer counts stay, of an older generation, and are never read.
            operations.append(("upsert", entity, None))
    return operations


class KeyUserTables(TableBase):
    """The key index: a document a key naming the namespaces that list it (see this module's docstring)."""

    async def _change_index(self, changes: Iterable[Change]) -> None:
        """Apply `changes` to the index and return once all are stored. Changes of one partition that arrive
        while one of its rounds is being written wait for the next round, merged (a later change of a key and a
        namespace replaces an earlier one): in this process one writer a partition, however many callers, and
        each document written once a round. Raises StateStoreError."""
        waits: dict[str, asyncio.Future[None]] = {}
        for (vault, name), namespace_id, listed in changes:
            partition = _digest(vault)
            work = self._index_pending.get(partition)
            if work is None:
                work = self._index_pending[partition] = _Pending(asyncio.get_running_loop().create_future())
                if partition not in self._index_rounds:
                    self._index_rounds[partition] = asyncio.ensure_future(self._index_rounds_of(partition))
            waits[partition] = work.done
            work.changes.setdefault((vault, name), {})[namespace_key(namespace_id)] = (namespace_id, listed)
        # Shielded: a caller given up on (a cancelled poll) must not cancel the round other callers wait for.
        outcomes = await asyncio.gather(*map(asyncio.shield, waits.values()), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _index_rounds_of(self, partition: str) -> None:
        """Write the partition's pending changes, round after round, until none wait."""
        try:
            while (work := self._index_pending.pop(partition, None)) is not None:
                try:
                    await self._apply_round(partition, work.changes)
                except Exception as error:
                    work.done.set_exception(error)
                else:
                    work.done.set_result(None)
        finally:
            self._index_rounds.pop(partition, None)

    async def _apply_round(self, partition: str, changes: dict[KeyId, dict[str, tuple[str, bool]]]) -> None:
        """Read the documents `changes` touch, apply them, write those that changed 100 to a transaction; a
        transaction refused (another instance wrote one of its documents meanwhile) is done again."""
        vault = next(iter(changes))[0]
        client = await self._table(KEY_USERS)
        for attempt in range(_RACE_RETRIES):
            await _back_off(attempt)
            documents = await self._documents(partition, list(changes), what=f"key index of vault {vault}")
            writes: list[tuple[KeyId, list[wire.Operation]]] = []
            for key_id, delta in changes.items():
                document = documents.get(key_id)
                users = dict(document.users) if document is not None else {}
                for namespace, (namespace_id, listed) in delta.items():
                    if listed:
                        users[namespace] = namespace_id
                    else:
                        users.pop(namespace, None)
                if users != (document.users if document is not None else {}):
                    writes.append((key_id, _operations(key_id, document, users)))
            transactions = list(_in_transactions(writes, lambda write: [op[1] for op in write[1]]))

            async def submit(transaction: list[tuple[KeyId, list[wire.Operation]]]) -> list[KeyId]:
                operations = [op for _, ops in transaction for op in ops]
                async with self._index_slots:
                    with _failures(f"key index of vault {vault}"):
                        try:
                            await _transact(lambda: wire.submit(client, operations))
                        except wire.TransactionRefusedError as refusal:
                            if refusal.status == 413:
                                raise StateStoreError(f"key index of vault {vault}", str(refusal)) from refusal
                            return [key_id for key_id, _ in transaction]
                return []

            refused = [key_id for keys in await asyncio.gather(*map(submit, transactions)) for key_id in keys]
            if not refused:
                return
            changes = {key_id: changes[key_id] for key_id in refused}
        raise StateStoreError(f"key index of vault {vault}", f"still contended after {_RACE_RETRIES} tries")

    async def _documents(self, partition: str, key_ids: list[KeyId] | None, *, what: str) -> dict[KeyId, _Document]:
        """The stored documents of `key_ids` (those that exist; None: all the partition's): their heads 14 to a
        query, then the other rows of the few large ones by their range; or, for many, the whole partition in one
        query. Read again while a document's rows are of different writes."""
        client = await self._table(KEY_USERS)
        literal = wire.literal
        whole = key_ids is None or len(key_ids) > _HEADS_BY_ROWS_AT_MOST
        if whole:
            filters = [f"PartitionKey eq {literal(partition)}"]
        else:
            heads = sorted({_head_row(key_id) for key_id in key_ids or ()})
            filters = [
                f"PartitionKey eq {literal(partition)} and ("
                + " or ".join(f"RowKey eq {literal(head)}" for head in heads[i : i + _ROWS_PER_QUERY])
                + ")"
                for i in range(0, len(heads), _ROWS_PER_QUERY)
            ]

        async def query(query_filter: str) -> list[TableEntity]:
            async with self._index_slots:
                with _failures(what):
                    return [entity async for entity in client.query_entities(query_filter)]

        for attempt in range(_SNAPSHOT_READS):
            await _back_off(attempt)
            entities = [entity for found in await asyncio.gather(*map(query, filters)) for entity in found]
            if not whole:
                large = {
                    (str(e.get("VaultId")), str(e.get("KeyName")))
                    for e in entities
                    if "-" not in str(e["RowKey"]) and int(e.get("Rows") or 1) > 1
                }
                entities += [e for found in await asyncio.gather(*(query(_key_range(k)) for k in large)) for e in found]
            documents, torn = _documents_from(entities)
            if not torn:
                if key_ids is None:
                    return documents
                wanted = set(key_ids)
                return {key_id: document for key_id, document in documents.items() if key_id in wanted}
        raise StateStoreError(what, f"a document was being rewritten on {_SNAPSHOT_READS} reads in a row")

    async def _users_of_key(self, key_id: KeyId, *, what: str) -> list[str]:
        document = (await self._documents(_digest(key_id[0]), [key_id], what=what)).get(key_id)
        return [] if document is None else list(document.users.values())

    async def _users_of_vault(self, vault: str, *, what: str) -> list[str]:
        documents = await self._documents(_digest(vault), None, what=what)
        return sorted({n for document in documents.values() for n in document.users.values()})

    async def index_entries(self) -> set[tuple[KeyId, str]]:
        """Every (key, namespace id) the index holds, as stored (for tests and diagnostics)."""
        client = await self._table(KEY_USERS)
        with _failures("key index"):
            entities = [entity async for entity in client.list_entities()]
        documents, torn = _documents_from(entities)
        if torn:
            raise StateStoreError("key index", f"{len(torn)} documents are being rewritten")
        return {(key_id, n) for key_id, document in documents.items() for n in document.users.values()}

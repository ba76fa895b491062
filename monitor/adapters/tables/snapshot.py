"""The fleet snapshot on Table Storage: chunks of one generation, then a head entity that points at them,
so a reader never sees half of a snapshot; and the key records, a partition a vault, kept the same way."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from azure.data.tables import UpdateMode

from monitor.adapters.tables.base import TableBase
from monitor.adapters.tables.codec import (
    _CONFLICTS,
    _HEAD,
    _PIECE,
    _PIECES_PER_ENTITY,
    _RACE_RETRIES,
    _SNAPSHOT_PARTITION,
    _SNAPSHOT_READS,
    KEY_RECORDS,
    SNAPSHOT,
    _back_off,
    _create_or_replace,
    _digest,
    _etag,
    _failures,
    _joined,
    _pack,
    _pieces,
    _time,
    _unpack,
)
from monitor.app.state import (
    StoredSnapshot,
    utc,
)
from monitor.domain.errors import StateStoreError


class SnapshotTables(TableBase):
    """The fleet snapshot on Table Storage: chunks of one generation, then a head entity that points at them,"""

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

    # -- key records: a partition a vault; rows 0001… hold the rest of the document, row 0000 last points at them

    async def put_key_records(self, records: Mapping[str, Mapping[str, Any]], *, written_at: datetime) -> None:
        written = utc(written_at, "written_at")
        packed = await asyncio.to_thread(lambda: {vault: _pack(document) for vault, document in records.items()})
        client = await self._table(KEY_RECORDS)
        per_entity = _PIECE * _PIECES_PER_ENTITY

        async def put(vault: str, data: bytes) -> None:
            generation = uuid.uuid4().hex
            chunks = [data[i : i + per_entity] for i in range(0, len(data), per_entity)] or [b""]

            def entity(number: int) -> dict[str, Any]:
                return {
                    "PartitionKey": _digest(vault),
                    "RowKey": f"{number:04d}",
                    "VaultId": vault,
                    "WrittenAt": written,
                    "Generation": generation,
                    "Chunks": len(chunks),
                    **_pieces(chunks[number], "D", what=f"key records of {vault}"),
                }

            with _failures(f"key records of {vault}"):
                # The head (row 0) last: a reader that finds rows of another generation skips the vault.
                await asyncio.gather(
                    *(client.upsert_entity(entity(n), mode=UpdateMode.REPLACE) for n in range(1, len(chunks)))
                )
                await client.upsert_entity(entity(0), mode=UpdateMode.REPLACE)

        await self._gather(put(vault, data) for vault, data in packed.items())

    async def list_key_records(self) -> dict[str, dict[str, Any]]:
        client = await self._table(KEY_RECORDS)
        with _failures("key records"):
            entities = [entity async for entity in client.list_entities()]
        partitions: dict[str, dict[str, Any]] = {}
        for entity in entities:
            partitions.setdefault(str(entity["PartitionKey"]), {})[str(entity["RowKey"])] = entity

        def readable() -> dict[str, dict[str, Any]]:
            records = {}
            for rows in partitions.values():
                head = rows.get("0000")
                if head is None:
                    continue
                chunks = [rows.get(f"{n:04d}") for n in range(int(head["Chunks"]))]
                if any(chunk is None or chunk["Generation"] != head["Generation"] for chunk in chunks):
                    continue  # being rewritten: read the vault's keys in full this once
                try:
                    records[str(head["VaultId"])] = _unpack(
                        b"".join(_joined(c, "D") for c in chunks if c), "key records"
                    )
                except StateStoreError:
                    continue  # an unreadable cache is no cache
            return records

        return await asyncio.to_thread(readable)

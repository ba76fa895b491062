"""The fleet snapshot in SQLite: one row, replaced only by a later one; and the key records beside it."""

from __future__ import annotations

import asyncio
import sqlite3
import zlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from monitor.adapters.sqlite.base import SqliteBase
from monitor.adapters.sqlite.codec import _compress, _decompress, _immediate, _text, _time
from monitor.app.state import (
    StoredSnapshot,
)
from monitor.domain.errors import StateStoreError


class SqliteSnapshot(SqliteBase):
    """The fleet snapshot in SQLite: one row, replaced only by a later one."""

    # -- snapshot

    async def put_snapshot(self, document: Mapping[str, Any], *, taken_at: datetime) -> bool:
        taken = _text(taken_at, "taken_at")
        # Compress before taking the lock: a large fleet's document takes a while, and nothing else needs to wait.
        data = await asyncio.to_thread(_compress, document)

        def put(connection: sqlite3.Connection) -> bool:
            with _immediate(connection):
                stored = connection.execute("SELECT taken_at FROM snapshot WHERE slot = 1").fetchone()
                if stored is not None and stored[0] > taken:
                    return False
                connection.execute(
                    """INSERT INTO snapshot (slot, taken_at, document) VALUES (1, ?, ?)
                       ON CONFLICT (slot) DO UPDATE SET taken_at = excluded.taken_at, document = excluded.document""",
                    (taken, data),
                )
            return True

        return await self._call(put)

    async def get_snapshot(self) -> StoredSnapshot | None:
        row = await self._call(lambda c: c.execute("SELECT taken_at, document FROM snapshot WHERE slot = 1").fetchone())
        if row is None:
            return None
        document = await asyncio.to_thread(_decompress, row[1])
        return StoredSnapshot(document=document, taken_at=_time(row[0]))

    # -- key records: a row a vault

    async def put_key_records(self, records: Mapping[str, Mapping[str, Any]], *, written_at: datetime) -> None:
        written = _text(written_at, "written_at")
        rows = await asyncio.to_thread(lambda: [(vault, written, _compress(doc)) for vault, doc in records.items()])

        def put(connection: sqlite3.Connection) -> None:
            with _immediate(connection):
                connection.executemany(
                    """INSERT INTO key_record (vault_id, written_at, document) VALUES (?, ?, ?)
                       ON CONFLICT (vault_id) DO UPDATE SET
                           written_at = excluded.written_at, document = excluded.document""",
                    rows,
                )

        await self._call(put)

    async def list_key_records(self) -> dict[str, dict[str, Any]]:
        rows = await self._call(lambda c: c.execute("SELECT vault_id, document FROM key_record").fetchall())

        def readable() -> dict[str, dict[str, Any]]:
            records = {}
            for vault, data in rows:
                try:
                    records[vault] = _decompress(data)
                except (zlib.error, ValueError, StateStoreError):
                    continue  # an unreadable cache is no cache: its keys are read in full
            return records

        return await asyncio.to_thread(readable)

"""Incidents and the alert outbox in SQLite, an incident and its notices written in one transaction."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from monitor.adapters.sqlite.base import SqliteBase
from monitor.adapters.sqlite.codec import _immediate, _json, _new_etag, _text, _time
from monitor.app.state import (
    Incident,
    OutboxEntry,
    check_outbox_of,
    namespace_key,
)
from monitor.domain.errors import StaleWriteError


class SqliteAlerts(SqliteBase):
    """Incidents and the alert outbox in SQLite, an incident and its notices written in one transaction."""

    # -- incidents

    @staticmethod
    def _incident(row: tuple[str, str, int, str, str]) -> Incident:
        namespace_id, condition, is_open, body, etag = row
        return Incident(
            namespace_id=namespace_id, condition=condition, body=json.loads(body), open=bool(is_open), etag=etag
        )

    async def get_incident(self, namespace_id: str, condition: str) -> Incident | None:
        args = (namespace_key(namespace_id), condition)
        row = await self._call(
            lambda c: c.execute(
                """SELECT namespace_id, condition, is_open, body, etag FROM incident
                   WHERE namespace_key = ? AND condition = ?""",
                args,
            ).fetchone()
        )
        return None if row is None else self._incident(row)

    async def list_incidents(self, *, open_only: bool = False) -> list[Incident]:
        query = "SELECT namespace_id, condition, is_open, body, etag FROM incident"
        if open_only:
            query += " WHERE is_open = 1"
        query += " ORDER BY namespace_key, condition"
        return await self._call(lambda c: [self._incident(row) for row in c.execute(query)])

    async def put_incident(
        self, incident: Incident, *, expected_etag: str | None = None, outbox: Sequence[OutboxEntry] = ()
    ) -> Incident:
        check_outbox_of(incident, outbox)
        queued = [self._outbox_row(entry) for entry in outbox]
        key, condition = incident.key
        body = _json(incident.body)
        etag = _new_etag()
        what = f"incident {condition!r} of {incident.namespace_id}"

        def put(connection: sqlite3.Connection) -> None:
            with _immediate(connection):
                row = connection.execute(
                    "SELECT etag FROM incident WHERE namespace_key = ? AND condition = ?", (key, condition)
                ).fetchone()
                stored = None if row is None else row[0]
                if stored != expected_etag:
                    raise StaleWriteError(what, expected_etag, "it exists" if stored is not None else "there is none")
                connection.execute(
                    """INSERT INTO incident (namespace_key, condition, namespace_id, is_open, body, etag)
                       VALUES (?, ?, ?, ?, ?, ?)
                       ON CONFLICT (namespace_key, condition) DO UPDATE SET
                           namespace_id = excluded.namespace_id, is_open = excluded.is_open,
                           body = excluded.body, etag = excluded.etag""",
                    (key, condition, incident.namespace_id, int(incident.open), body, etag),
                )
                connection.executemany(
                    """INSERT INTO outbox (id, namespace_key, namespace_id, condition, sink, created_at, attempts,
                                           next_attempt_at, last_error, document, etag)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    queued,
                )

        await self._call(put)
        return Incident(
            namespace_id=incident.namespace_id, condition=condition, body=incident.body, open=incident.open, etag=etag
        )

    # -- the alert outbox

    @staticmethod
    def _outbox_row(entry: OutboxEntry) -> tuple[object, ...]:
        return (
            entry.id,
            namespace_key(entry.namespace_id),
            entry.namespace_id,
            entry.condition,
            entry.sink,
            _text(entry.created_at, "created_at"),
            entry.attempts,
            None if entry.next_attempt_at is None else _text(entry.next_attempt_at, "next_attempt_at"),
            entry.last_error,
            _json(entry.document),
            _new_etag(),
        )

    async def list_outbox(self) -> list[OutboxEntry]:
        def read(connection: sqlite3.Connection) -> list[OutboxEntry]:
            rows = connection.execute(
                """SELECT id, namespace_id, condition, sink, created_at, attempts, next_attempt_at, last_error,
                          document, etag, claimed_by, claimed_until FROM outbox ORDER BY id"""
            )
            return [
                OutboxEntry(
                    id=row[0],
                    namespace_id=row[1],
                    condition=row[2],
                    sink=row[3],
                    created_at=_time(row[4]),
                    attempts=row[5],
                    next_attempt_at=None if row[6] is None else _time(row[6]),
                    last_error=row[7],
                    document=json.loads(row[8]),
                    etag=row[9],
                    claimed_by=row[10],
                    claimed_until=None if row[11] is None else _time(row[11]),
                )
                for row in rows
            ]

        return await self._call(read)

    async def _write_outbox(self, entry: OutboxEntry, assignments: str, values: tuple[object, ...]) -> str | None:
        """One conditional UPDATE of `entry` (at its etag, when it has one); the new etag, or None when none matched."""
        etag = _new_etag()
        statement = f"UPDATE outbox SET {assignments}, etag = ? WHERE id = ?"  # noqa: S608 - fixed column lists
        parameters: tuple[object, ...] = (*values, etag, entry.id)
        if entry.etag is not None:
            statement += " AND etag = ?"
            parameters += (entry.etag,)
        return etag if await self._changed(statement, parameters) == 1 else None

    async def claim_outbox_entry(self, entry: OutboxEntry, *, holder: str, until: datetime) -> OutboxEntry | None:
        if entry.etag is None:
            raise ValueError(f"alert {entry.id} has no etag: claim an entry as list_outbox returned it")
        claimed = replace(entry, claimed_by=holder, claimed_until=until)
        etag = await self._write_outbox(entry, "claimed_by = ?, claimed_until = ?", (holder, _text(until, "until")))
        return None if etag is None else replace(claimed, etag=etag)

    async def update_outbox_entry(self, entry: OutboxEntry) -> bool:
        due = None if entry.next_attempt_at is None else _text(entry.next_attempt_at, "next_attempt_at")
        etag = await self._write_outbox(
            entry,
            "attempts = ?, next_attempt_at = ?, last_error = ?, claimed_by = NULL, claimed_until = NULL",
            (entry.attempts, due, entry.last_error),
        )
        return etag is not None

    async def delete_outbox_entry(self, entry: OutboxEntry) -> bool:
        if entry.etag is None:
            return await self._changed("DELETE FROM outbox WHERE id = ?", (entry.id,)) == 1
        return await self._changed("DELETE FROM outbox WHERE id = ? AND etag = ?", (entry.id, entry.etag)) == 1

"""The SQLite store's schema (each migration in order) and how values are stored: times as text that
sorts in time order, documents as compressed JSON, and the transactions every read-modify-write runs in."""

from __future__ import annotations

import json
import sqlite3
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from monitor.adapters.packing import packed_json
from monitor.app.state import (
    utc,
)
from monitor.domain.errors import StateStoreError

T = TypeVar("T")

# Each entry takes the schema from its index to the next version; SCHEMA_VERSION is their count.
# Never edit a shipped entry: append one that alters the tables, so existing files migrate in place.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE namespace_state (
            namespace_key TEXT PRIMARY KEY,      -- lower-cased ARM id: ARM ids are case-insensitive
            namespace_id  TEXT NOT NULL,         -- the id as last written
            evaluated_at  TEXT NOT NULL,         -- UTC, fixed width, so text order is time order
            document      TEXT NOT NULL          -- monitor.formats.render.namespace_document(), JSON
        )""",
        """CREATE TABLE namespace_key (
            namespace_key TEXT NOT NULL REFERENCES namespace_state (namespace_key) ON DELETE CASCADE,
            vault_id      TEXT NOT NULL,         -- monitor.domain.model.vault_id()
            key_name      TEXT NOT NULL,         -- monitor.domain.model.name_id()
            PRIMARY KEY (namespace_key, vault_id, key_name)
        )""",
        "CREATE INDEX namespace_key_by_key ON namespace_key (vault_id, key_name)",
        """CREATE TABLE snapshot (
            slot     INTEGER PRIMARY KEY CHECK (slot = 1),   -- only the last snapshot is kept
            taken_at TEXT NOT NULL,
            document BLOB NOT NULL                           -- zlib-compressed JSON
        )""",
        """CREATE TABLE processed_event (
            event_id     TEXT PRIMARY KEY,
            processed_at TEXT NOT NULL
        )""",
        "CREATE INDEX processed_event_by_time ON processed_event (processed_at)",
        """CREATE TABLE incident (
            namespace_key TEXT NOT NULL,
            condition     TEXT NOT NULL,
            namespace_id  TEXT NOT NULL,
            is_open       INTEGER NOT NULL,
            body          TEXT NOT NULL,         -- JSON
            etag          TEXT NOT NULL,         -- random per write, so a deleted-and-recreated row never matches
            PRIMARY KEY (namespace_key, condition)
        )""",
        """CREATE TABLE lease (
            name       TEXT PRIMARY KEY,
            holder     TEXT NOT NULL,
            expires_at TEXT NOT NULL
        )""",
    ),
    (
        """CREATE TABLE outbox (
            id              TEXT PRIMARY KEY,    -- monitor.app.state.outbox_id(): sorts in the order entries were made
            namespace_key   TEXT NOT NULL,
            namespace_id    TEXT NOT NULL,
            condition       TEXT NOT NULL,
            sink            TEXT NOT NULL,
            created_at      TEXT NOT NULL,
            attempts        INTEGER NOT NULL,
            next_attempt_at TEXT,
            last_error      TEXT,
            document        TEXT NOT NULL        -- the alert, JSON
        )""",
    ),
    (
        """CREATE TABLE poll_mark (
            slot   INTEGER PRIMARY KEY CHECK (slot = 1),     -- only the last complete poll is kept
            holder TEXT NOT NULL,
            at     TEXT NOT NULL
        )""",
        # The fencing token; a released lease keeps its row (holder '') so the next token is still larger.
        "ALTER TABLE lease ADD COLUMN token INTEGER NOT NULL DEFAULT 0",
        # Every write of an entry sets a new etag; entries queued before this version start without one.
        "ALTER TABLE outbox ADD COLUMN etag TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE outbox ADD COLUMN claimed_by TEXT",
        "ALTER TABLE outbox ADD COLUMN claimed_until TEXT",
        """CREATE TABLE budget (
            scope        TEXT NOT NULL,
            window_start TEXT NOT NULL,
            granted      INTEGER NOT NULL,
            PRIMARY KEY (scope, window_start)
        )""",
    ),
    (
        # What a poll compares its judgements with, without reading documents ('' for states stored before).
        "ALTER TABLE namespace_state ADD COLUMN digest TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE namespace_state ADD COLUMN verdict TEXT NOT NULL DEFAULT ''",
    ),
    (
        """CREATE TABLE key_record (
            vault_id   TEXT PRIMARY KEY,         -- monitor.domain.model.vault_id()
            written_at TEXT NOT NULL,
            document   BLOB NOT NULL             -- zlib-compressed JSON: what a poll learnt of the vault's keys
        )""",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_RELEASED = "1970-01-01T00:00:00.000000Z"  # a released lease's expiry: before any `now`


_IN_BATCH = 500  # parameters per IN (...): well under SQLite's limit of 999 in older builds


def _text(t: datetime, what: str) -> str:
    return utc(t, what).strftime(_TIME_FORMAT)


def _time(text: str) -> datetime:
    return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)


def _json(value: Mapping[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _compress(document: Mapping[str, Any]) -> bytes:
    return packed_json(document)


def _decompress(data: bytes) -> dict[str, Any]:
    document = json.loads(zlib.decompress(data).decode("utf-8"))
    if not isinstance(document, dict):
        raise StateStoreError("snapshot", "stored document is not a JSON object")
    return document


def _select_in(connection: sqlite3.Connection, select: str, keys: Sequence[str]) -> list[tuple[Any, ...]]:
    """`select ... WHERE namespace_key IN (keys)`, in batches under SQLite's limit on bound parameters."""
    found: list[tuple[Any, ...]] = []
    for first in range(0, len(keys), _IN_BATCH):
        batch = keys[first : first + _IN_BATCH]
        placeholders = ",".join("?" * len(batch))
        # Only placeholders are formatted into the statement; the keys are bound.
        found += connection.execute(f"{select} WHERE namespace_key IN ({placeholders})", batch).fetchall()
    return found


def _new_etag() -> str:
    return f'"{uuid.uuid4().hex}"'


@contextmanager
def _immediate(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction that holds the database's write lock from its first read."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
        connection.execute("COMMIT")
    except BaseException:
        # Also when COMMIT itself failed (busy past the timeout): never leave the connection mid-transaction.
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


@contextmanager
def _consistent_read(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A read transaction: several SELECTs see one state of the database."""
    connection.execute("BEGIN")
    try:
        yield connection
    finally:
        connection.execute("COMMIT")

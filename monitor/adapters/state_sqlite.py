"""StateStore in one SQLite file: the embedded default for local runs and `keyhealth serve`.

Standard-library sqlite3 in WAL mode, so readers never wait for the writer; every read-modify-write
runs in a `BEGIN IMMEDIATE` transaction, which takes the database's write lock before reading, so
two processes on one file cannot both see "free" and both take a lease. Calls run in a worker
thread (asyncio.to_thread): the event loop never waits on the disk or on another process's lock.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

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

__all__ = ["SCHEMA_VERSION", "SqliteStateStore"]

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
    return zlib.compress(_json(document).encode("utf-8"), 6)


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


class SqliteStateStore:
    """StateStore backed by SQLite at `path` (':memory:' for a private, throwaway store).

    One connection per store, used by one worker thread at a time; other processes open their own
    store on the same file and SQLite's file locks keep them apart, waiting up to `busy_timeout`
    seconds for each other.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0) -> None:
        self._path = os.fspath(path)
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SqliteStateStore(path={self._path!r})"

    async def __aenter__(self) -> SqliteStateStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- plumbing

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise StateStoreError(repr(self), "the store is closed")
        if self._connection is None:
            # isolation_level=None: no implicit transactions; each method says where its own begin and end.
            connection = sqlite3.connect(
                self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            try:
                connection.execute("PRAGMA foreign_keys = ON")
                if self._path != ":memory:":
                    self._enable_wal(connection)
                    # In WAL mode NORMAL never corrupts the file; a power cut may lose the last commits,
                    # which the next poll rewrites anyway.
                    connection.execute("PRAGMA synchronous = NORMAL")
                self._migrate(connection)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def _enable_wal(self, connection: sqlite3.Connection) -> None:
        # Switching the journal mode does not wait on SQLite's busy handler: when another connection
        # opens the same new file at that moment it fails at once with "database is locked". Retry,
        # within the busy timeout; once one connection has switched, the mode is in the file.
        delay, waited = 0.005, 0.0
        while True:
            try:
                connection.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if ("locked" not in str(error) and "busy" not in str(error)) or waited >= self._busy_timeout:
                    raise
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.25)

    def _migrate(self, connection: sqlite3.Connection) -> None:
        with _immediate(connection):
            connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
            version = row[0] if row and row[0] is not None else 0
            if version > SCHEMA_VERSION:
                raise StateStoreError(
                    repr(self),
                    f"schema version {version} is newer than this keyhealth's ({SCHEMA_VERSION}): upgrade it",
                )
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    connection.execute(statement)
            if version < SCHEMA_VERSION:
                connection.execute("DELETE FROM schema_version")
                connection.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return work(self._connect())
            except sqlite3.Error as error:
                raise StateStoreError(repr(self), f"{type(error).__name__}: {error}") from error

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._run, work)

    async def _changed(self, statement: str, parameters: tuple[object, ...]) -> int:
        """Run one statement (one atomic transaction of its own) and count the rows it changed."""
        return await self._call(lambda c: c.execute(statement, parameters).rowcount)

    async def close(self) -> None:
        def close() -> None:
            with self._lock:
                self._closed = True
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None

        await asyncio.to_thread(close)

    async def schema_version(self) -> int:
        """The schema version of the open database (migrating it first if it was older)."""
        return await self._call(lambda c: int(c.execute("SELECT max(version) FROM schema_version").fetchone()[0]))

    # -- namespace states and the key index

    async def put_namespace_states(self, states: Iterable[NamespaceState]) -> list[str]:
        latest: dict[str, NamespaceState] = {}
        for state in states:
            previous = latest.get(state.key)
            if previous is None or state.evaluated_at >= previous.evaluated_at:
                latest[state.key] = state
        rows = [
            (key, state, _text(state.evaluated_at, "evaluated_at"), _json(state.document))
            for key, state in latest.items()
        ]

        def put(connection: sqlite3.Connection) -> list[str]:
            stale: list[str] = []
            with _immediate(connection):
                # Statements a batch, not a namespace: a poll writes the whole fleet's states at once.
                keys = [row[0] for row in rows]
                stored = dict(_select_in(connection, "SELECT namespace_key, evaluated_at FROM namespace_state", keys))
                fresh = []
                for key, state, evaluated_at, document in rows:
                    if key in stored and stored[key] > evaluated_at:
                        stale.append(state.id)
                    else:
                        fresh.append((key, state, evaluated_at, document))
                connection.executemany(
                    """INSERT INTO namespace_state (namespace_key, namespace_id, evaluated_at, document)
                       VALUES (?, ?, ?, ?)
                       ON CONFLICT (namespace_key) DO UPDATE SET
                           namespace_id = excluded.namespace_id,
                           evaluated_at = excluded.evaluated_at,
                           document = excluded.document""",
                    [(key, state.id, evaluated_at, document) for key, state, evaluated_at, document in fresh],
                )
                indexed: dict[str, set[KeyId]] = {}
                for key, vault, name in _select_in(
                    connection, "SELECT namespace_key, vault_id, key_name FROM namespace_key", [r[0] for r in fresh]
                ):
                    indexed.setdefault(key, set()).add((vault, name))
                # The key index is rewritten only where a namespace's keys changed (rarely, after the first poll).
                moved = [(key, state) for key, state, _, _ in fresh if indexed.get(key, set()) != state.key_ids]
                connection.executemany("DELETE FROM namespace_key WHERE namespace_key = ?", [(k,) for k, _ in moved])
                connection.executemany(
                    "INSERT INTO namespace_key (namespace_key, vault_id, key_name) VALUES (?, ?, ?)",
                    [(key, vault, name) for key, state in moved for vault, name in state.key_ids],
                )
            return sorted(stale, key=namespace_key)

        return await self._call(put)

    @staticmethod
    def _state(row: tuple[str, str, str], key_ids: Iterable[KeyId]) -> NamespaceState:
        _, evaluated_at, document = row
        return NamespaceState(
            document=json.loads(document), evaluated_at=_time(evaluated_at), key_ids=frozenset(key_ids)
        )

    async def get_namespace_state(self, namespace_id: str) -> NamespaceState | None:
        key = namespace_key(namespace_id)

        def get(connection: sqlite3.Connection) -> NamespaceState | None:
            with _consistent_read(connection):
                row = connection.execute(
                    "SELECT namespace_key, evaluated_at, document FROM namespace_state WHERE namespace_key = ?", (key,)
                ).fetchone()
                if row is None:
                    return None
                keys = connection.execute(
                    "SELECT vault_id, key_name FROM namespace_key WHERE namespace_key = ?", (key,)
                ).fetchall()
            return self._state(row, keys)

        return await self._call(get)

    async def list_namespace_states(self) -> list[NamespaceState]:
        def list_all(connection: sqlite3.Connection) -> list[NamespaceState]:
            with _consistent_read(connection):
                rows = connection.execute(
                    "SELECT namespace_key, evaluated_at, document FROM namespace_state ORDER BY namespace_key"
                ).fetchall()
                keys: dict[str, list[KeyId]] = {}
                for key, vault, name in connection.execute(
                    "SELECT namespace_key, vault_id, key_name FROM namespace_key"
                ):
                    keys.setdefault(key, []).append((vault, name))
            return [self._state(row, keys.get(row[0], ())) for row in rows]

        return await self._call(list_all)

    async def delete_namespace_state(self, namespace_id: str) -> bool:
        key = namespace_key(namespace_id)

        def delete(connection: sqlite3.Connection) -> bool:
            with _immediate(connection):
                # The index rows go with it: ON DELETE CASCADE.
                return connection.execute("DELETE FROM namespace_state WHERE namespace_key = ?", (key,)).rowcount > 0

        return await self._call(delete)

    async def namespaces_for_key(self, vault_uri: str, key_name: str) -> list[str]:
        query = """SELECT DISTINCT s.namespace_id, s.namespace_key FROM namespace_key k
                   JOIN namespace_state s USING (namespace_key)
                   WHERE k.vault_id = ? AND k.key_name = ? ORDER BY s.namespace_key"""
        args = (vault_id(vault_uri), name_id(key_name))
        return await self._call(lambda c: [row[0] for row in c.execute(query, args)])

    async def namespaces_for_vault(self, vault_uri: str) -> list[str]:
        query = """SELECT DISTINCT s.namespace_id, s.namespace_key FROM namespace_key k
                   JOIN namespace_state s USING (namespace_key)
                   WHERE k.vault_id = ? ORDER BY s.namespace_key"""
        args = (vault_id(vault_uri),)
        return await self._call(lambda c: [row[0] for row in c.execute(query, args)])

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

    # -- the last complete poll

    async def record_poll_completed(self, holder: str, *, at: datetime) -> None:
        # One statement: the upsert only replaces a mark that is not later than this one.
        await self._changed(
            """INSERT INTO poll_mark (slot, holder, at) VALUES (1, ?, ?)
               ON CONFLICT (slot) DO UPDATE SET holder = excluded.holder, at = excluded.at
               WHERE excluded.at >= poll_mark.at""",
            (holder, _text(at, "at")),
        )

    async def last_poll_completed(self) -> PollMark | None:
        row = await self._call(lambda c: c.execute("SELECT holder, at FROM poll_mark WHERE slot = 1").fetchone())
        return None if row is None else PollMark(holder=row[0], at=_time(row[1]))

    # -- events

    async def mark_event_processed(self, event_id: str, *, at: datetime) -> bool:
        processed_at = _text(at, "at")
        # One statement is one atomic transaction: of two racing inserts, exactly one changes a row.
        inserted = await self._changed(
            "INSERT INTO processed_event (event_id, processed_at) VALUES (?, ?) ON CONFLICT (event_id) DO NOTHING",
            (event_id, processed_at),
        )
        return inserted == 1

    async def purge_processed_events(self, *, before: datetime) -> int:
        cutoff = _text(before, "before")
        return await self._changed("DELETE FROM processed_event WHERE processed_at < ?", (cutoff,))

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

    # -- shared budgets

    async def take_budget(self, scope: str, window_start: datetime, wanted: int, limit: int) -> int:
        check_budget_request(wanted, limit)
        window = _text(window_start, "window_start")
        forget_before = _text(window_start - BUDGET_KEPT, "window_start")

        def take(connection: sqlite3.Connection) -> int:
            with _immediate(connection):
                row = connection.execute(
                    "SELECT granted FROM budget WHERE scope = ? AND window_start = ?", (scope, window)
                ).fetchone()
                granted = 0 if row is None else row[0]
                grant = max(0, min(wanted, limit - granted))
                if row is None:
                    # A new window: the scope's old ones go.
                    connection.execute(
                        "DELETE FROM budget WHERE scope = ? AND window_start < ?", (scope, forget_before)
                    )
                    connection.execute(
                        "INSERT INTO budget (scope, window_start, granted) VALUES (?, ?, ?)", (scope, window, grant)
                    )
                elif grant:
                    connection.execute(
                        "UPDATE budget SET granted = granted + ? WHERE scope = ? AND window_start = ?",
                        (grant, scope, window),
                    )
            return grant

        return await self._call(take)

    # -- leases

    async def acquire_lease(self, name: str, holder: str, duration: timedelta, *, now: datetime) -> Lease | None:
        current = _text(now, "now")
        until = now + duration
        until_text = _text(until, "now")

        def acquire(connection: sqlite3.Connection) -> Lease | None:
            with _immediate(connection):
                row = connection.execute(
                    "SELECT holder, expires_at, token FROM lease WHERE name = ?", (name,)
                ).fetchone()
                if row is None:
                    token = 1
                else:
                    held = row[0] != "" and row[1] > current
                    if held and row[0] != holder:
                        return None
                    token = row[2] if held else row[2] + 1  # extending one's own keeps the token
                connection.execute(
                    """INSERT INTO lease (name, holder, expires_at, token) VALUES (?, ?, ?, ?)
                       ON CONFLICT (name) DO UPDATE SET
                           holder = excluded.holder, expires_at = excluded.expires_at, token = excluded.token""",
                    (name, holder, until_text, token),
                )
            return Lease(name=name, holder=holder, expires_at=until, token=token)

        return await self._call(acquire)

    async def renew_lease(
        self, name: str, holder: str, duration: timedelta, *, now: datetime, token: int
    ) -> Lease | None:
        current = _text(now, "now")
        until = now + duration
        renewed = await self._changed(
            "UPDATE lease SET expires_at = ? WHERE name = ? AND holder = ? AND token = ? AND expires_at > ?",
            (_text(until, "now"), name, holder, token, current),
        )
        return Lease(name=name, holder=holder, expires_at=until, token=token) if renewed == 1 else None

    async def release_lease(self, name: str, holder: str, *, token: int | None = None) -> bool:
        # The row stays, holderless and long expired, so the token goes on growing.
        statement = "UPDATE lease SET holder = '', expires_at = ? WHERE name = ? AND holder = ? AND holder != ''"
        parameters: tuple[object, ...] = (_RELEASED, name, holder)
        if token is not None:
            statement += " AND token = ?"
            parameters += (token,)
        return await self._changed(statement, parameters) == 1

    async def get_lease(self, name: str) -> Lease | None:
        row = await self._call(
            lambda c: c.execute(
                "SELECT holder, expires_at, token FROM lease WHERE name = ? AND holder != ''", (name,)
            ).fetchone()
        )
        return None if row is None else Lease(name=name, holder=row[0], expires_at=_time(row[1]), token=row[2])

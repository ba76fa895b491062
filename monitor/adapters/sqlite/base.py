"""The plumbing of the SQLite store: one connection (WAL mode, migrated on open), used by one worker thread
at a time; SQLite errors as StateStoreError."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Self

from monitor.adapters.sqlite.codec import _MIGRATIONS, SCHEMA_VERSION, T, _immediate
from monitor.domain.errors import StateStoreError


class SqliteBase:
    """What every part of SqliteStateStore uses: the one connection, migrated on open, and its worker thread."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0) -> None:
        self._path = os.fspath(path)
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SqliteStateStore(path={self._path!r})"

    async def __aenter__(self) -> Self:
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

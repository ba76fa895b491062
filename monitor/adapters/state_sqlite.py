"""StateStore in one SQLite file: the embedded default for local runs and `keyhealth serve`.

Standard-library sqlite3 in WAL mode, so readers never wait for the writer; every read-modify-write
runs in a `BEGIN IMMEDIATE` transaction, which takes the database's write lock before reading, so
two processes on one file cannot both see "free" and both take a lease. Calls run in a worker
thread (asyncio.to_thread): the event loop never waits on the disk or on another process's lock.
"""

from __future__ import annotations

from monitor.adapters.sqlite.alerts import SqliteAlerts
from monitor.adapters.sqlite.codec import SCHEMA_VERSION
from monitor.adapters.sqlite.coordination import SqliteCoordination
from monitor.adapters.sqlite.namespaces import SqliteNamespaces
from monitor.adapters.sqlite.snapshot import SqliteSnapshot

__all__ = ["SCHEMA_VERSION", "SqliteStateStore"]


class SqliteStateStore(SqliteNamespaces, SqliteSnapshot, SqliteAlerts, SqliteCoordination):
    """StateStore backed by SQLite at `path` (':memory:' for a private, throwaway store).

    One connection per store, used by one worker thread at a time; other processes open their own
    store on the same file and SQLite's file locks keep them apart, waiting up to `busy_timeout`
    seconds for each other. Each kind of record lives in its part (monitor/adapters/sqlite/).
    """

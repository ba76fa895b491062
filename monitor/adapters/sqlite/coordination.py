"""What processes coordinate through in SQLite: the last complete poll, processed events, shared request
budgets and leases with fencing tokens, each in a `BEGIN IMMEDIATE` transaction."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

from monitor.adapters.sqlite.base import SqliteBase
from monitor.adapters.sqlite.codec import _RELEASED, _immediate, _text, _time
from monitor.app.state import (
    BUDGET_KEPT,
    Lease,
    PollMark,
    check_budget_request,
)


class SqliteCoordination(SqliteBase):
    """What processes coordinate through in SQLite: the last complete poll, processed events, shared request"""

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

"""What instances coordinate through on Table Storage: the last complete poll, processed events, shared
request budgets and leases with fencing tokens."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta

from azure.data.tables import TableEntity

from monitor.adapters.tables.base import TableBase
from monitor.adapters.tables.codec import (
    _CONFLICTS,
    _EVENT_PARTITION,
    _LEASE_PARTITION,
    _POLL_MARK,
    _RACE_RETRIES,
    _RELEASED,
    _WINDOW_ROW,
    BUDGETS,
    EVENTS,
    LEASES,
    MARKS,
    _back_off,
    _create_once,
    _create_or_replace,
    _digest,
    _etag,
    _failures,
    _time,
    _transact,
)
from monitor.app.state import (
    BUDGET_KEPT,
    Lease,
    PollMark,
    check_budget_request,
    utc,
)
from monitor.domain.errors import StateStoreError


class CoordinationTables(TableBase):
    """What instances coordinate through on Table Storage: the last complete poll, processed events, shared"""

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
            created = await _create_once(client, entity)  # insert-only: the service lets one caller win
        # None: a resend found the mark, most likely this call's own lost send: the work was this call's.
        return created is not False

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

    # -- shared budgets

    async def take_budget(self, scope: str, window_start: datetime, wanted: int, limit: int) -> int:
        check_budget_request(wanted, limit)
        window_start = utc(window_start, "window_start")
        partition, row = _digest(scope), window_start.strftime(_WINDOW_ROW)
        what = f"budget {scope}"
        client = await self._table(BUDGETS)
        # What this instance last wrote of the scope's window is most often still what is there (one instance
        # polls at a time): written on that at once, conditionally, a grant is one request, not a read and a
        # write. A window this instance has not written is assumed new. Either guess, wrong, is refused and
        # the window read.
        remembered = self._budget_rows.get(partition)
        for attempt in range(_RACE_RETRIES):
            await _back_off(attempt)
            if attempt == 0:
                etag, granted = remembered[1:] if remembered is not None and remembered[0] == row else (None, 0)
            else:
                current = await self._get(BUDGETS, partition, row, what=what)
                etag, granted = (None, 0) if current is None else (_etag(current.metadata), int(current["Granted"]))
            grant = max(0, min(wanted, limit - granted))
            if grant == 0:
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
                    # Sent again when its connection failed: a write applied the first time is refused the
                    # second and the window read, so a lost answer counts one grant twice (the safe side).
                    written = await _transact(functools.partial(_create_or_replace, client, entity, etag))
                except _CONFLICTS:
                    continue  # another instance took some, or the guess was wrong: read the window
            self._budget_rows[partition] = (row, _etag(written), granted + grant)
            if etag is None:
                await self._forget_windows(partition, window_start)
            return grant
        raise StateStoreError(what, f"still contended after {_RACE_RETRIES} tries")

    async def _forget_windows(self, partition: str, opened: datetime) -> None:
        """Delete a scope's windows more than BUDGET_KEPT older than the one just `opened` (by whoever opened it;
        by this instance at most once every BUDGET_KEPT a scope: a window a slice would be a query a slice)."""
        last = self._budgets_forgotten.get(partition)
        if last is not None and opened - last < BUDGET_KEPT:
            return
        self._budgets_forgotten[partition] = opened
        before = (opened - BUDGET_KEPT).strftime(_WINDOW_ROW)
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
            if current is None:
                created = await _create_once(client, entity)
                if created is None:  # a resend found a lease: ours if it names us, with our token and expiry
                    found = await self._lease_entity(name)
                    return found is not None and (found["Holder"], found["Token"]) == (holder, token)
                return created
            try:
                await _create_or_replace(client, entity, _etag(current.metadata))
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

"""Keeping a lease while the work it guards runs: renewed under its fencing token, and lost for good once a
renewal fails, so the work stops instead of acting beside the instance that took over."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta

from monitor.app.state import Lease, StateStore
from monitor.domain.errors import StateStoreError

LOG = logging.getLogger("keyhealth.leases")

__all__ = ["LeaseKeeper"]


class LeaseKeeper:
    """Holds `lease` (just acquired at `acquired_at`) for the work it guards.

    Times for the store are `acquired_at` plus the monotonic time since (the clock is injectable, so tests
    decide how much time passes); nothing reads the wall clock. `hold()` is cheap to call before each step:
    it renews only once `renew_every` seconds have passed since the last renewal, and concurrent callers
    share one renewal.
    """

    def __init__(
        self,
        store: StateStore,
        lease: Lease,
        duration: timedelta,
        *,
        acquired_at: datetime,
        renew_every: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self.lease = lease
        self._duration = duration
        self._acquired_at = acquired_at
        self._renew_every = renew_every
        self._clock = clock
        self._sleep = sleep
        self._origin = self._renewed = clock()
        self._lock = asyncio.Lock()
        self.lost = False

    def now(self) -> datetime:
        """The time to write to the store now: the acquisition time plus the monotonic time since."""
        return self._acquired_at + timedelta(seconds=self._clock() - self._origin)

    async def hold(self, *, force: bool = False) -> bool:
        """True while the lease is still this holder's: renewed first when due (always with `force`).

        False, for good, once a renewal fails (expired, released, or taken over under a later token).
        Raises StateStoreError when the store fails (the lease is not known to be lost).
        """
        if self.lost:
            return False
        async with self._lock:
            if self.lost:
                return False
            if not force and self._clock() - self._renewed < self._renew_every:
                return True
            started = self._clock()
            lease = self.lease
            renewed = await self._store.renew_lease(
                lease.name, lease.holder, self._duration, now=self.now(), token=lease.token
            )
            if renewed is None:
                self.lost = True
                LOG.warning(
                    "keyhealth: lease %s (token %d) of %s was lost; stopping the work it guards",
                    lease.name,
                    lease.token,
                    lease.holder,
                )
                return False
            self.lease, self._renewed = renewed, started
            return True

    @contextlib.asynccontextmanager
    async def renewing(self) -> AsyncIterator[LeaseKeeper]:
        """Renew in the background every `renew_every` seconds while the block runs (a store failure is logged
        and tried again next time; the lease then expires on its own if the store stays down)."""

        async def keep() -> None:
            while not self.lost:
                await self._sleep(self._renew_every)
                try:
                    await self.hold(force=True)
                except StateStoreError as failure:
                    LOG.warning("keyhealth: could not renew lease %s: %s", self.lease.name, failure)

        task = asyncio.create_task(keep())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def release(self) -> bool:
        """Give the lease up, under its token: a lease already lost (taken over) is left to its new holder."""
        if self.lost:
            return False
        return await self._store.release_lease(self.lease.name, self.lease.holder, token=self.lease.token)

"""Bounded work per event: Key Vault events for the same target inside a short window share one re-read.

Event Grid delivers at least once and anyone holding the webhook's credential can post; either way a burst
of events about one key must not become a burst of Key Vault reads (one 1 MB POST of 5,000 forged events
made 6,268 before this existed). A target is a vault and a key name (ASCII case folded, as Key Vault
compares them) or a vault alone (an access-policy change). Per target:

- the first event re-reads at once (the *leading* read) and opens a window;
- events inside the window are answered `coalesced` at once; if any came, one *trailing* re-read runs when
  the window ends (with the latest of them), which opens the next window;
- so a flood costs at most one read per window per target, and what changed during a window is read at
  its end, not left to the next poll (which stays the backstop when a process stops before then).

Windows live in the process (a Functions worker or `serve`); each instance coalesces on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from monitor.domain.model import name_id, vault_id

log = logging.getLogger("keyhealth")

Target = tuple[str, str | None]  # (vault id, folded key name or None for the vault itself)
MAX_TARGETS = 10_000  # open windows kept at once; the oldest are forgotten first (their trailing reads still run)


def target_of(vault_uri: str, object_name: str | None) -> Target:
    return vault_id(vault_uri), name_id(object_name) if object_name else None


@dataclass
class _Window:
    until: float  # monotonic
    pending: object | None = None  # the latest event that arrived inside the window, for the trailing read
    coalesced: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class EventCoalescer:
    """Decides, per target, whether an event re-reads now or rides on a read in flight or due."""

    def __init__(self, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._windows: OrderedDict[Target, _Window] = OrderedDict()
        self.trailing_reads = 0

    def admit(self, target: Target) -> bool:
        """True: re-read now (and the window opens). False: the event is coalesced into the window."""
        if self.window <= 0:
            return True
        now = self._clock()
        current = self._windows.get(target)
        if current is not None and now < current.until:
            return False
        self._windows[target] = _Window(until=now + self.window)
        self._windows.move_to_end(target)
        while len(self._windows) > MAX_TARGETS:
            self._windows.popitem(last=False)
        return True

    def forget(self, target: Target) -> None:
        """Close `target`'s window (its leading read failed), keeping a trailing read already scheduled."""
        current = self._windows.get(target)
        if current is not None and current.task is None:
            del self._windows[target]

    def defer(
        self,
        target: Target,
        event: object,
        read: Callable[[object, datetime], Awaitable[object]],
        *,
        now: datetime,
    ) -> None:
        """Coalesce `event` into `target`'s open window; the first one deferred schedules the trailing read,
        `read(latest event, now)`, for when the window ends."""
        current = self._windows.get(target)
        if current is None:  # forgotten (MAX_TARGETS): read at once rather than never
            self._windows[target] = current = _Window(until=self._clock())
        current.pending = event
        current.coalesced += 1
        if current.task is None:
            delay = max(current.until - self._clock(), 0.0)
            started = self._clock()

            async def trailing() -> None:
                await asyncio.sleep(delay)
                latest, count = current.pending, current.coalesced
                current.pending, current.coalesced, current.task = None, 0, None
                current.until = self._clock() + self.window  # the trailing read opens the next window
                if latest is None:
                    return
                self.trailing_reads += 1
                at = now + timedelta(seconds=self._clock() - started)
                try:
                    await read(latest, at)
                except Exception:  # nobody awaits this task: log it, the next event or poll reads again
                    log.exception("keyhealth: the trailing re-read after %d coalesced events failed", count)

            current.task = asyncio.get_running_loop().create_task(trailing())

    async def close(self) -> None:
        """Cancel the trailing reads still waiting (a process stopping: the next poll is the backstop)."""
        tasks = [w.task for w in self._windows.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

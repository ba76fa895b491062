"""The sandbox clock: the instant at which the sandbox judges the World, moved by tests or by wall time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

ClockListener = Callable[[datetime], None]


class SandboxClock:
    """A movable clock that starts at a given instant.

    With `speed` 0 (the default) it stands still until `advance` or `set` moves it, so tests are
    deterministic; with `speed` > 0 it also runs, `speed` sandbox seconds per wall-clock second, which
    suits a demo. Listeners hear of every explicit move (events are planned from them).
    """

    def __init__(self, start: datetime, *, speed: float = 0.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        if speed < 0:
            raise ValueError(f"clock speed must be 0 or more, got {speed}")
        self._lock = threading.Lock()
        self._monotonic = monotonic
        self._speed = speed
        self._anchor = _utc(start)
        self._anchor_wall = monotonic()
        self._listeners: list[ClockListener] = []

    @property
    def speed(self) -> float:
        return self._speed

    def now(self) -> datetime:
        """The sandbox's current instant (UTC)."""
        with self._lock:
            return self._now_locked()

    def _now_locked(self) -> datetime:
        if not self._speed:
            return self._anchor
        elapsed = (self._monotonic() - self._anchor_wall) * self._speed
        return self._anchor + timedelta(seconds=elapsed)

    def advance(self, delta: timedelta) -> datetime:
        """Move the clock forward by `delta` (backward when negative); returns the new instant."""
        with self._lock:
            self._anchor = self._now_locked() + delta
            self._anchor_wall = self._monotonic()
            now = self._anchor
        self._notify(now)
        return now

    def set(self, instant: datetime) -> datetime:
        """Put the clock at `instant` (a naive datetime is taken as UTC); returns it."""
        with self._lock:
            self._anchor = _utc(instant)
            self._anchor_wall = self._monotonic()
            now = self._anchor
        self._notify(now)
        return now

    def subscribe(self, listener: ClockListener) -> None:
        """Call `listener(now)` after every advance or set, on the thread that moved the clock."""
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: ClockListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _notify(self, now: datetime) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(now)


def _utc(instant: datetime) -> datetime:
    return instant.replace(tzinfo=UTC) if instant.tzinfo is None else instant.astimezone(UTC)

"""Work for processes that share one SQLite file with the test (importable, so `spawn` can start it)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from monitor.adapters.state_sqlite import SqliteStateStore

T0 = datetime(2026, 11, 22, tzinfo=UTC)


def race(path: str, worker: int, event_ids: list[str], barrier: Any, results: Any) -> None:
    """After every worker is ready, mark the events (in an order of its own) and try to take the lease."""

    async def main() -> tuple[int, list[str], bool]:
        async with SqliteStateStore(path) as store:
            await store.get_lease("warm-up")  # open and migrate before the race starts
            barrier.wait(timeout=60)
            order = list(event_ids)
            random.Random(worker).shuffle(order)
            won = [event_id for event_id in order if await store.mark_event_processed(event_id, at=T0)]
            leased = await store.acquire_lease("poll", f"worker-{worker}", timedelta(minutes=5), now=T0) is not None
            return worker, won, leased

    results.put(asyncio.run(main()))

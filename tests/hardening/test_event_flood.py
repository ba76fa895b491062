"""Bounded work per event: a flood of events for one key costs a handful of Key Vault reads, counted by the
stand-in's request log, in one 1 MB delivery and across deliveries inside the coalescing window."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

from monitor.domain.model import UpdateVersion
from monitor.entry.webhook import MAX_BODY
from tests.hardening.support import VAULT, fleet_document, serving

EXPIRED = "Microsoft.KeyVault.KeyExpired"  # the shortest key event type: 5,000 fit in one 1 MB delivery
WINDOW = 2.0  # seconds of coalescing in these tests (the default is 10)
GIVE_UP = 30.0  # a liveness bound, never a speed target


def forged(count: int, key: str = "k1", *, seed: int = 7, repeat_every: int = 10) -> list[dict[str, Any]]:
    """`count` small events for `key`: random versions, every `repeat_every`-th repeating one version."""
    draw = random.Random(seed)
    repeated = "0" * 32
    events = []
    for index in range(count):
        version = repeated if index % repeat_every == 0 else f"{draw.getrandbits(128):032x}"
        events.append(
            {
                "id": f"f{seed}-{index}",
                "eventType": EXPIRED,
                "eventTime": "2026-11-22T00:00:00Z",
                "data": {"Id": f"{VAULT}/keys/{key}/{version}", "ObjectName": key},
            }
        )
    return events


def _body(events: list[dict[str, Any]]) -> bytes:
    return json.dumps(events, separators=(",", ":")).encode()


def _key_reads(running: Any, key: str) -> int:
    return int(running.sandbox.requests.count(service="keyvault", path=f"/keys/{key}"))


async def _settle(running: Any, key: str, at_least: int) -> int:
    """The key's reads once at least `at_least` happened and a whole window more passed without another."""
    deadline = time.monotonic() + GIVE_UP
    while _key_reads(running, key) < at_least and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(WINDOW * 1.5)
    return _key_reads(running, key)


def test_5000_events_for_one_key_in_one_1_mb_post_cost_one_read(tmp_path: Path):
    events = forged(5000)
    body = _body(events)
    assert len(body) <= MAX_BODY  # what Event Grid (or a forger) can put in one delivery

    async def run() -> tuple[int, dict[str, Any], int]:
        async with serving(tmp_path, fleet_document(), KEYHEALTH_EVENT_COALESCE_SECONDS=str(WINDOW)) as running:
            before = _key_reads(running, "k1")
            status, summary = await running.post("/api/events", body)
            assert status == 200, summary
            return _key_reads(running, "k1") - before, summary, await _settle(running, "k1", before + 1) - before

    right_after, summary, settled = asyncio.run(run())
    assert summary["received"] == 5000
    assert summary["outcomes"] == {"evaluated": 1, "coalesced": 4999}
    assert right_after == 1 and settled == 1  # every event arrived with the read: no trailing read is owed


def test_5000_events_in_five_deliveries_inside_the_window_cost_at_most_two_reads(tmp_path: Path):
    async def run() -> tuple[list[dict[str, Any]], int]:
        async with serving(tmp_path, fleet_document(), KEYHEALTH_EVENT_COALESCE_SECONDS=str(WINDOW)) as running:
            before = _key_reads(running, "k1")
            summaries = []
            for batch in range(5):
                status, summary = await running.post("/api/events", _body(forged(1000, seed=batch)))
                assert status == 200, summary
                summaries.append(summary["outcomes"])
            return summaries, await _settle(running, "k1", before + 2) - before

    summaries, reads = asyncio.run(run())
    assert summaries[0] == {"evaluated": 1, "coalesced": 999}
    assert all(outcomes == {"coalesced": 1000} for outcomes in summaries[1:])
    assert reads == 2  # the leading read, and one trailing read at the window's end


def test_events_for_two_keys_read_both_and_a_later_event_reads_again(tmp_path: Path):
    async def run() -> tuple[int, int, int]:
        async with serving(tmp_path, fleet_document(), KEYHEALTH_EVENT_COALESCE_SECONDS=str(WINDOW)) as running:
            k1, k2 = _key_reads(running, "k1"), _key_reads(running, "k2")
            mixed = forged(100, "k1") + forged(100, "k2", seed=8)
            random.Random(3).shuffle(mixed)
            status, summary = await running.post("/api/events", _body(mixed))
            assert status == 200 and summary["outcomes"] == {"evaluated": 2, "coalesced": 198}, summary
            first = (_key_reads(running, "k1") - k1, _key_reads(running, "k2") - k2)
            await asyncio.sleep(WINDOW * 1.5)  # the window is over and nothing is owed
            status, summary = await running.post("/api/events", _body(forged(1, "k1", seed=9)))
            assert status == 200 and summary["outcomes"] == {"evaluated": 1}, summary
            return *first, _key_reads(running, "k1") - k1

    k1_reads, k2_reads, k1_after = asyncio.run(run())
    assert (k1_reads, k2_reads, k1_after) == (1, 1, 2)


def test_a_change_inside_the_window_is_read_at_its_end(tmp_path: Path):
    """The key is disabled right after the leading read; the trailing read sees it before any poll would."""

    async def run() -> tuple[str, str]:
        async with serving(tmp_path, fleet_document(), KEYHEALTH_EVENT_COALESCE_SECONDS=str(WINDOW)) as running:
            await running.post("/api/events", _body(forged(1, "k1", seed=11)))
            running.sandbox.apply(
                UpdateVersion(at=running.sandbox.clock.now(), vault=VAULT, key="k1", version=None, enabled=False)
            )
            _, summary = await running.post("/api/events", _body(forged(1, "k1", seed=12)))
            assert summary["outcomes"] == {"coalesced": 1}
            right_after = (await running.get("/status/sb-one"))[1]["status_now"]
            await _settle(running, "k1", 2)
            return right_after, (await running.get("/status/sb-one"))[1]["status_now"]

    assert asyncio.run(run()) == ("healthy", "revoked")

"""Maintained libraries against what keyhealth does by hand, on keyhealth's own inputs.

Run it in a scratch environment that has the candidates (they are not keyhealth's dependencies):
    python3 -m venv /tmp/choices && /tmp/choices/bin/pip install -e . portion croniter pydantic-settings
    /tmp/choices/bin/python -m bench.library_choices

- intervals: `monitor.domain.intervals.intersect` against portion's `&`, on 100,000 pairs of canonical
  interval lists shaped like the predictor's (a key's usable time, its vault's existence);
- NCRONTAB: `monitor.entry.schedule.next_fire` against croniter (seconds first, day AND weekday as
  NCRONTAB has them), on 2,000 random instants for each of a dozen schedules;
- settings: what pydantic-settings says for two bad app settings, and what importing it costs.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from monitor.domain.intervals import Interval, intersect, merge_append
from monitor.entry.schedule import next_fire

T0 = datetime(2026, 11, 22, tzinfo=UTC)
SCHEDULES = (
    "0 */5 * * * *",
    "30 0 * * * *",
    "0 0 9 * * 1-5",
    "0 15 10 * * 0",
    "0 0 0 1 * *",
    "0 0 12 13 * 5",
    "*/10 * * * * *",
    "0 0 0 29 2 *",
    "0 0 4 * * 7",
    "5,35 2-10/2 * * * *",
    "0 0 0 1-7 * 1",
    "0 30 1 L * *",  # `L` is croniter's, not NCRONTAB's
)


def _canonical(draw: random.Random, count: int) -> list[Interval]:
    intervals: list[Interval] = []
    t = T0
    for _ in range(count):
        start = t + timedelta(days=draw.randint(0, 40))
        end = start + timedelta(days=draw.randint(1, 60))
        merge_append(intervals, start, end)
        t = end + timedelta(seconds=1)
    return intervals


def intervals() -> None:
    import portion  # type: ignore[import-not-found, import-untyped, unused-ignore]  # a candidate only

    draw = random.Random(7)  # noqa: S311 - benchmark data
    pairs = [(_canonical(draw, draw.randint(1, 4)), _canonical(draw, draw.randint(1, 3))) for _ in range(100_000)]
    started = time.perf_counter()
    ours = [intersect(a, b) for a, b in pairs]
    ours_seconds = time.perf_counter() - started

    def converted(lst: list[Interval]) -> portion.Interval:
        return portion.Interval(*(portion.closedopen(s, e) for s, e in lst))

    theirs_in = [(converted(a), converted(b)) for a, b in pairs]
    started = time.perf_counter()
    theirs = [a & b for a, b in theirs_in]
    theirs_seconds = time.perf_counter() - started
    same = all([(x.lower, x.upper) for x in t if not x.empty] == o for t, o in zip(theirs, ours, strict=True))
    print(
        f"intervals: 100,000 intersections: ours {ours_seconds:.2f} s, portion {theirs_seconds:.2f} s "
        f"(its conversions not counted); the same results: {same}"
    )


def schedules() -> None:
    from croniter import croniter  # type: ignore[import-not-found, import-untyped, unused-ignore]  # a candidate only

    draw = random.Random(3)  # noqa: S311 - benchmark data
    starts = [T0 + timedelta(seconds=draw.randint(0, 3 * 365 * 86400)) for _ in range(2000)]
    for text in SCHEDULES:
        try:
            ours = [next_fire(text, t) for t in starts]
        except ValueError as error:
            print(f"NCRONTAB {text!r}: ours refuses it ({error}); croniter accepts it")
            continue
        theirs = [croniter(text, t, second_at_beginning=True, day_or=False).get_next(datetime) for t in starts]
        print(f"NCRONTAB {text!r}: {sum(a != b for a, b in zip(ours, theirs, strict=True))} of 2,000 firings differ")
    started = time.perf_counter()
    for t in starts:
        next_fire(SCHEDULES[0], t)
    ours_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for t in starts:
        croniter(SCHEDULES[0], t, second_at_beginning=True, day_or=False).get_next(datetime)
    theirs_seconds = time.perf_counter() - started
    print(f"NCRONTAB: 2,000 next firings: ours {ours_seconds * 1000:.0f} ms, croniter {theirs_seconds * 1000:.0f} ms")


def settings() -> None:
    program = """
import os, time
started = time.perf_counter()
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
imported = time.perf_counter() - started
class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEYHEALTH_")
    http_retries: int = Field(3, ge=0, le=10)
try:
    Settings()
except ValidationError as error:
    print("settings: pydantic-settings says: " + " | ".join(str(error).splitlines()[:3]))
print(f"settings: importing pydantic-settings takes {imported * 1000:.0f} ms")
"""
    environment = {**os.environ, "KEYHEALTH_HTTP_RETRIES": "three"}
    subprocess.run([sys.executable, "-c", program], env=environment, check=True)  # noqa: S603
    ours = subprocess.run(
        [sys.executable, "-m", "monitor", "check"], env=environment, capture_output=True, text=True, check=False
    )
    print(f"settings: keyhealth says: {ours.stderr.strip().splitlines()[0]}")


if __name__ == "__main__":
    intervals()
    schedules()
    settings()

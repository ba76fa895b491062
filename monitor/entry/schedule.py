"""NCRONTAB schedules as the Functions timer reads them (`second minute hour day month weekday`):
parsing, the next firing after an instant, and the period around one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_FIELDS = (("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("month", 1, 12), ("weekday", 0, 6))


@dataclass(frozen=True, slots=True)
class Schedule:
    """A parsed NCRONTAB schedule: the values each field allows (weekday 0 is Sunday)."""

    text: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]


def _field_values(name: str, text: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        span, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if span == "*":
                start, end = low, high
            elif "-" in span:
                first, _, last = span.partition("-")
                start, end = int(first), int(last)
            else:
                start = int(span)
                end = high if step_text else start
        except ValueError:
            raise ValueError(f"{name} field {text!r}: {part!r} is not *, a number, a range or a step") from None
        if name == "weekday" and end == 7:  # 7 is Sunday too
            values.add(0)
            end = 6 if start <= 6 else 7
            if start == 7:
                continue
        if step < 1 or not low <= start <= end <= high:
            raise ValueError(f"{name} field {text!r}: {part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


def parse_schedule(text: str) -> Schedule:
    """Parse a six-field NCRONTAB schedule (`*`, numbers, lists, ranges, `*/n`, `a-b/n`).

    Raises ValueError naming the field that is not understood.
    """
    parts = text.split()
    if len(parts) != len(_FIELDS):
        raise ValueError(f"{text!r} has {len(parts)} fields; NCRONTAB has 6: second minute hour day month weekday")
    values = [_field_values(name, part, low, high) for part, (name, low, high) in zip(parts, _FIELDS, strict=True)]
    return Schedule(" ".join(parts), *values)


def next_fire(schedule: Schedule | str, after: datetime) -> datetime:
    """The first instant strictly after `after` (UTC, whole seconds) that `schedule` fires at.

    Day and weekday must both match when both are restricted. Raises ValueError when the schedule
    never fires (such as 30 February) within eight years.
    """
    cron = parse_schedule(schedule) if isinstance(schedule, str) else schedule
    t = after.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
    limit = t + timedelta(days=366 * 8)
    while t < limit:
        if t.month not in cron.months:
            year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
            t = t.replace(year=year, month=month, day=1, hour=0, minute=0, second=0)
            continue
        weekday = (t.weekday() + 1) % 7  # Python: Monday 0; cron: Sunday 0
        if t.day not in cron.days or weekday not in cron.weekdays:
            t = t.replace(hour=0, minute=0, second=0) + timedelta(days=1)
            continue
        if t.hour not in cron.hours:
            t = t.replace(minute=0, second=0) + timedelta(hours=1)
            continue
        if t.minute not in cron.minutes:
            t = t.replace(second=0) + timedelta(minutes=1)
            continue
        later = [s for s in cron.seconds if s >= t.second]
        if not later:
            t = t.replace(second=0) + timedelta(minutes=1)
            continue
        return t.replace(second=min(later))
    raise ValueError(f"schedule {cron.text!r} never fires")


def schedule_period(schedule: Schedule | str, at: datetime) -> timedelta:
    """The gap between the schedule's next two firings after `at`."""
    first = next_fire(schedule, at)
    return next_fire(schedule, first) - first

"""Time as half-open intervals [start, end) and step functions over it (Timeline): the arithmetic
the usability rules are computed with, exactly, in the domain's own datetimes."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Generic, TypeVar

BEGINNING = datetime.min.replace(tzinfo=UTC)

Interval = tuple[datetime, datetime]  # [start, end)
S = TypeVar("S")


class Timeline(Generic[S]):
    """A piecewise-constant state: `states[i]` holds from `starts[i]` until `starts[i + 1]`."""

    __slots__ = ("starts", "states")

    def __init__(self, initial: S) -> None:
        self.starts: list[datetime] = [BEGINNING]
        self.states: list[S] = [initial]

    def at(self, t: datetime) -> S:
        return self.states[bisect_right(self.starts, t) - 1]

    @property
    def latest(self) -> S:
        return self.states[-1]

    def set_from(self, t: datetime, state: S) -> None:
        """Record that `state` holds from t on; changes must arrive in time order."""
        if self.starts[-1] == t:
            self.states[-1] = state
        else:
            self.starts.append(t)
            self.states.append(state)

    def epochs_within(self, start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime, S]]:
        """(start, end, state) for each epoch overlapping [start, end), clipped to it."""
        starts, states = self.starts, self.states
        last = len(starts) - 1
        for index in range(bisect_right(starts, start) - 1, last + 1):
            epoch_start = starts[index]
            if epoch_start >= end:
                break
            epoch_end = starts[index + 1] if index < last and starts[index + 1] < end else end
            yield max(epoch_start, start), epoch_end, states[index]

    def epochs_between(self, start: datetime, end: datetime) -> Iterator[tuple[datetime, S]]:
        """(epoch start, state) for each epoch overlapping [start, end)."""
        first = bisect_right(self.starts, start) - 1
        for index in range(first, len(self.starts)):
            if self.starts[index] >= end:
                break
            yield self.starts[index], self.states[index]


def merge_append(intervals: list[Interval], start: datetime, end: datetime) -> None:
    """Append [start, end) to sorted, merged intervals none of which ends after `start`.

    An empty interval is dropped and one that touches the last is merged into it, so the list stays
    in its one canonical form: sorted, disjoint, not touching.
    """
    if start >= end:
        return
    if intervals and intervals[-1][1] == start:
        intervals[-1] = (intervals[-1][0], end)
    else:
        intervals.append((start, end))


def intersect(first: Sequence[Interval], second: Sequence[Interval]) -> list[Interval]:
    """Where both of two canonical interval lists hold, as a canonical list."""
    result: list[Interval] = []
    i = j = 0
    while i < len(first) and j < len(second):
        first_start, first_end = first[i]
        second_start, second_end = second[j]
        merge_append(result, max(first_start, second_start), min(first_end, second_end))
        if first_end < second_end:
            i += 1
        else:
            j += 1
    return result

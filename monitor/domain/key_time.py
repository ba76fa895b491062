"""Each key's usable time as intervals: when its vault exists, and when the version a reference uses
(current or pinned) is enabled, valid and allows the operations, read off the key's timeline."""

from __future__ import annotations

from bisect import bisect_right
from datetime import datetime

from monitor.domain.intervals import Interval, Timeline, merge_append
from monitor.domain.model import (
    KeyVersion,
)
from monitor.domain.states import BY_CREATED, MISSING_KEY, KeyState

MISSING_TIMELINE: Timeline[KeyState] = Timeline(MISSING_KEY)


def exists_intervals(existence: Timeline[bool], start: datetime, end: datetime) -> list[Interval]:
    """The intervals within [start, end) during which a vault exists (rule 1)."""
    intervals: list[Interval] = []
    for epoch_start, epoch_end, exists in existence.epochs_within(start, end):
        if exists:
            merge_append(intervals, epoch_start, epoch_end)
    return intervals


def key_intervals(timeline: Timeline[KeyState], version: str | None, start: datetime, end: datetime) -> list[Interval]:
    """The intervals within [start, end) during which rules 3 to 5 hold for the key.

    `version` is the pinned version, or None to follow the current one.
    """
    intervals: list[Interval] = []
    # Timeline.epochs_within, without a generator: most keys with a timeline have two or three epochs.
    starts, states = timeline.starts, timeline.states
    last = len(starts) - 1
    for index in range(bisect_right(starts, start) - 1, last + 1):
        epoch_start = starts[index]
        if epoch_start >= end:
            break
        epoch_end = starts[index + 1] if index < last and starts[index + 1] < end else end
        append_key_epoch(intervals, states[index], version, max(epoch_start, start), epoch_end)
    return intervals


def append_key_epoch(
    intervals: list[Interval], state: KeyState, version: str | None, epoch_start: datetime, epoch_end: datetime
) -> None:
    """Append the part of one epoch [epoch_start, epoch_end), in which the key is `state`, that passes rules 3 to 5."""
    if not state.exists or state.deleted:
        return
    if version is not None:
        pinned = state.version(version)
        if pinned is not None:
            _append_valid(intervals, pinned, max(epoch_start, pinned.created), epoch_end)
        return
    # versions are sorted by `created`: each is current from its own `created` until the next
    # one's (ties: the later-listed one wins, and the earlier gets an empty span). Start from the
    # one current at the epoch's start: those before it are never current within the epoch.
    versions = state.versions
    if not versions:
        return  # a key listed with no version has no current one: never usable
    last = len(versions) - 1
    first = last
    # Nearly always the newest version is current at the epoch's start already: no search, and the older
    # versions (which cost a cache miss each at this size) are not even looked at.
    if last > 0 and versions[last].created > epoch_start:
        first = max(bisect_right(versions, epoch_start, key=BY_CREATED) - 1, 0)
    for index in range(first, last + 1):
        candidate = versions[index]
        created = candidate.created
        if created >= epoch_end:
            break
        start = created if created > epoch_start else epoch_start
        until = versions[index + 1].created if index < last else epoch_end
        end = until if until < epoch_end else epoch_end
        # _append_valid, inline: this runs for nearly every reference of a fleet.
        # has_required_ops holds for any version that lists no key_ops: most do, and skip the property.
        if not candidate.enabled or (candidate.key_ops is not None and not candidate.has_required_ops):
            continue
        nbf, exp = candidate.nbf, candidate.exp
        if nbf is not None and nbf > start:
            start = nbf
        if exp is not None and exp < end:
            end = exp
        if start >= end:
            continue
        if intervals and intervals[-1][1] == start:
            intervals[-1] = (intervals[-1][0], end)
        else:
            intervals.append((start, end))


def _append_valid(intervals: list[Interval], version: KeyVersion, start: datetime, end: datetime) -> None:
    """Append the part of [start, end) in which `version` passes rules 4 and 5 (see version_reasons)."""
    # has_required_ops holds for any version that lists no key_ops: most do, and skip the property.
    if not version.enabled or (version.key_ops is not None and not version.has_required_ops):
        return
    nbf, exp = version.nbf, version.exp
    if nbf is not None and nbf > start:
        start = nbf
    if exp is not None and exp < end:
        end = exp
    # merge_append, inline: this runs for nearly every reference of a fleet.
    if start >= end:
        return
    if intervals and intervals[-1][1] == start:
        intervals[-1] = (intervals[-1][0], end)
    else:
        intervals.append((start, end))

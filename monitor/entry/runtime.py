"""Process tuning for the composition roots; the domain stays free of it."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def batch_gc() -> Iterator[None]:
    """Run a one-shot batch computation (a CLI command that exits when it is done) without the cyclic
    garbage collector, then freeze what it built.

    Judging a large fleet builds a few million objects that all live until the report is printed.
    The collector would walk them again and again as they accumulate (three full passes, seconds
    each, for 100,000 namespaces) and find nothing to free, since the domain makes no cycles. At the
    end, gc.freeze() moves the survivors out of the collector's sight instead of walking them once
    more (0.4 s at that size): the process exits soon after, so a cycle the batch might have made
    costs memory until then, never correctness. Not for long-lived processes (`serve`, Functions).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()

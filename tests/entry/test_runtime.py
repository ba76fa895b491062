"""batch_gc: the collector is off inside, back on after, and what the batch built is frozen."""

from __future__ import annotations

import gc

from monitor.entry.runtime import batch_gc


def test_the_collector_is_off_inside_and_restored_after():
    assert gc.isenabled()
    frozen_before = gc.get_freeze_count()
    with batch_gc():
        assert not gc.isenabled()
        built = [[n] for n in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen_before + len(built)
    gc.unfreeze()  # leave the test process as it was


def test_a_disabled_collector_stays_disabled():
    gc.disable()
    try:
        with batch_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()

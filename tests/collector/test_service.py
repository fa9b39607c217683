"""collector/service.py: the GC settings applied once the sidecar has started."""

from __future__ import annotations

import gc

from collector.service import GC_THRESHOLDS, settle_gc


def test_settle_gc_freezes_startup_objects_and_sets_thresholds() -> None:
    before = gc.get_threshold()
    startup_object = [["made before settle_gc"]]  # a container the GC tracks
    assert any(o is startup_object for o in gc.get_objects())
    try:
        settle_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
        # frozen objects are no longer in the generations a collection scans
        assert not any(o is startup_object for o in gc.get_objects())
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

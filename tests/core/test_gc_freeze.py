"""existing_objects_frozen: old objects skipped by collections, new garbage still collected."""

from __future__ import annotations

import gc
import weakref

from adaround_lightning.core.gc_freeze import existing_objects_frozen


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cycle collector frees it


def test_new_cycles_are_collected_inside_and_everything_is_unfrozen_after() -> None:
    with existing_objects_frozen() as froze:
        assert froze
        frozen = gc.get_freeze_count()
        assert frozen > 0
        node = _Node()
        alive = weakref.ref(node)
        del node
        gc.collect()
        assert alive() is None  # made inside: collected as before
        assert gc.get_freeze_count() == frozen  # the old objects stay frozen meanwhile
    assert gc.get_freeze_count() == 0


def test_garbage_from_before_is_collected_not_frozen() -> None:
    node = _Node()
    alive = weakref.ref(node)
    del node
    with existing_objects_frozen():
        assert alive() is None


def test_leaves_an_existing_freeze_alone() -> None:
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        with existing_objects_frozen() as froze:
            assert not froze
        assert gc.get_freeze_count() == before  # not unfrozen by us
    finally:
        gc.unfreeze()


def test_unfreezes_when_the_body_raises() -> None:
    try:
        with existing_objects_frozen():
            raise RuntimeError("stop")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == 0

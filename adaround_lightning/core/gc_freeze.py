"""Cheap full garbage collections during a walk: the objects that existed before it are frozen.

The PyTorch walk collects garbage after every block (``CalibrationWalk.release_fit_memory``):
each block's Trainer leaves reference cycles that hold its optimizer state. A full
``gc.collect()`` traverses every tracked object of the process, and torch, torchvision and
Lightning alone are some 460,000 of them: 0.26 s per collection on this project's machine,
5.3 s of a 100-step MobileNetV2 walk's 21.6 s (20 blocks). :func:`existing_objects_frozen`
collects once and moves the survivors to the interpreter's permanent generation
(``gc.freeze``), so a collection inside traverses only what the walk created; it unfreezes
them on the way out. What the walk makes and drops is collected as before.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["existing_objects_frozen"]

log = logging.getLogger(__name__)


@contextmanager
def existing_objects_frozen() -> Iterator[bool]:
    """Collections inside skip the objects alive on entry (``gc.freeze``), unfrozen on exit.

    Leaves the interpreter as it is where something else has frozen objects already
    (``gc.get_freeze_count() > 0``, e.g. a server that froze before forking workers): its
    arrangement is not ours to undo.

    Yields:
        Whether it froze (False where it left the interpreter as it was).

    Example:
        >>> import gc
        >>> with existing_objects_frozen() as froze:
        ...     froze, gc.get_freeze_count() > 0
        (True, True)
        >>> gc.get_freeze_count()
        0
    """
    if gc.get_freeze_count() > 0:
        log.debug("objects are frozen already (gc.freeze): full collections stay full")
        yield False
        return
    gc.collect()  # garbage that exists now is freed, not frozen with the live objects
    gc.freeze()
    try:
        yield True
    finally:
        gc.unfreeze()

"""Ctrl-C and preemption: a walk stops between layers and keeps every finished one.

SIGINT (Ctrl-C) and SIGTERM (what SLURM and Kubernetes send before SIGKILL) set a flag while a
walk runs (:func:`stop_on_signals`). The fit in progress ends at its next optimizer step and its
layer is dropped, not committed; the walk then raises :class:`Interrupted` carrying how many
layers were finished, whose checkpoints ``resume=`` continues from. A second signal, or one that
arrives outside a walk, raises at once.

Example:
    >>> with stop_on_signals():
    ...     STOP.requested
    False
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["STOP", "Interrupted", "StopRequest", "stop_on_signals", "stoppable_walk"]

log = logging.getLogger("adaround_lightning")

#: The signals a run stops on, and the exit status a shell gives each (128 + its number).
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The run was stopped by a signal (not an ``Exception``: nothing may swallow it).

    Attributes:
        signum: The signal (``signal.SIGINT`` or ``signal.SIGTERM``).
        finished: Layers finished (and checkpointed) when it stopped; None outside a walk.
        total: Layers the walk had to calibrate; None outside a walk.
    """

    def __init__(self, signum: int, finished: int | None = None, total: int | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.finished = finished
        self.total = total

    @property
    def exit_status(self) -> int:
        """What a shell reports for a process killed by the signal: 130 or 143."""
        return 128 + int(self.signum)

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        if self.finished is None:
            return f"interrupted ({name})"
        return f"interrupted ({name}) after {self.finished} of {self.total} layers"


class StopRequest:
    """The process's pending stop: which signal, and whether a walk is running to honour it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.walks = 0

    @property
    def requested(self) -> bool:
        """A signal arrived; the walk stops at its next safe point."""
        return self.signum is not None

    def check(self) -> None:
        """Raise :class:`Interrupted` if a stop was requested."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.walks > 0 and self.signum is None:
            self.signum = signum
            log.warning(
                "%s: stopping after the layers finished so far (the current one is dropped); "
                "send it again to stop at once",
                signal.Signals(signum).name,
            )
            return
        raise Interrupted(signum)


#: The one stop request of this process (signals are process-wide).
STOP = StopRequest()


@contextlib.contextmanager
def stop_on_signals(walk: bool = True) -> Iterator[StopRequest]:
    """Route SIGINT and SIGTERM to :data:`STOP` for the duration (main thread only; nestable).

    Args:
        walk: A walk runs inside: the first signal sets the flag instead of raising.
    """
    if threading.current_thread() is not threading.main_thread():
        yield STOP  # signal handlers can only be set from the main thread
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    outermost = all(handler != STOP.handle for handler in previous.values())
    if outermost:
        STOP.signum = None
    for s in SIGNALS:
        signal.signal(s, STOP.handle)
    STOP.walks += int(walk)
    try:
        yield STOP
    finally:
        STOP.walks -= int(walk)
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def stoppable_walk(total: int, finished: Callable[[], int]) -> Iterator[None]:
    """A walk under :func:`stop_on_signals` whose :class:`Interrupted` says how far it got.

    Args:
        total: The layers the walk calibrates.
        finished: How many are finished (and checkpointed) at the moment it stops.
    """
    try:
        with stop_on_signals():
            yield
    except Interrupted as stop:
        raise Interrupted(stop.signum, finished(), total) from None

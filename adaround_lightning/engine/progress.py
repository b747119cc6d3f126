"""Rich progress bars for a calibration: layers done overall, and the current layer's steps.

Shown only on an interactive terminal outside CI (``CI`` unset); elsewhere the driver's one log
line per layer is all the output. The current layer's loss terms are read from the device at most
twice a second, so the bars cost no host sync per step.
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import Any

import lightning as L

__all__ = ["CalibrationProgress", "interactive"]


def interactive() -> bool:
    """Whether progress bars should be drawn: a TTY on stderr and no ``CI`` variable."""
    return sys.stderr.isatty() and not os.environ.get("CI")


class CalibrationProgress(L.Callback):
    """Overall and per-layer progress; a Lightning callback of every layer's fit.

    Args:
        total_layers: Layers to calibrate in this run.
        done_layers: Layers already finished (restored from a checkpoint).
        enabled: Draw bars (None: :func:`interactive`).
        refresh_seconds: How often the loss terms are read and shown.

    Example:
        >>> with CalibrationProgress(total_layers=3, enabled=False) as bar:
        ...     bar.start_layer("conv1", steps=100)
        ...     bar.finish_layer()
    """

    def __init__(
        self,
        total_layers: int,
        done_layers: int = 0,
        enabled: bool | None = None,
        refresh_seconds: float = 0.5,
    ) -> None:
        self.enabled = interactive() if enabled is None else enabled
        self.total_layers = total_layers
        self.done_layers = done_layers
        self.refresh_seconds = refresh_seconds
        self._progress: Any = None
        self._overall: Any = None
        self._layer: Any = None
        self._last_refresh = 0.0

    def __enter__(self) -> CalibrationProgress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[losses]}"),
                transient=False,
            )
            self._progress.start()
            self._overall = self._progress.add_task(
                "layers", total=self.total_layers, completed=self.done_layers, losses=""
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def start_layer(self, name: str, steps: int) -> None:
        """A new layer's fit begins."""
        if self._progress is None:
            return
        if self._layer is not None:
            self._progress.remove_task(self._layer)
        self._layer = self._progress.add_task(f"  {name}", total=steps, losses="")
        self._last_refresh = 0.0

    def finish_layer(self) -> None:
        """The current layer is done."""
        self.done_layers += 1
        if self._progress is not None:
            self._progress.update(self._overall, completed=self.done_layers)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        step = trainer.global_step
        if now - self._last_refresh < self.refresh_seconds and step < (trainer.max_steps or 0):
            return
        self._last_refresh = now
        fields: dict[str, Any] = {"completed": step}
        history = getattr(pl_module, "history", None)
        if history is not None and step > 0:
            reconstruction, regularization = history[step - 1].tolist()  # one sync per refresh
            fields["losses"] = f"rec {reconstruction:.3g}  reg {regularization:.3g}"
        self._progress.update(self._layer, **fields)

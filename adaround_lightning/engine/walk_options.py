"""How a walk runs, whatever the front end: the Trainer, checkpoints, loggers, progress, engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger

from adaround_lightning.engine.engine_config import EngineConfig

__all__ = ["WalkOptions"]


@dataclass(frozen=True)
class WalkOptions:
    """What a walk needs besides the model, the data and the algorithm's settings.

    Attributes:
        trainer: Keyword arguments of the Lightning ``Trainer`` of each fit.
        checkpoint: A folder for per-layer progress; a walk with one resumes after its layers.
        checkpoint_tag: A fingerprint of the settings; a checkpoint with another is refused.
        loggers: Lightning loggers shared by every fit (metrics prefixed by layer name).
        progress: Show rich progress bars (None: on an interactive terminal outside CI).
        engine: How the calibration runs (cache placement, batching of passes, steps).

    Example:
        >>> WalkOptions({"accelerator": "cpu"}).checkpoint is None
        True
    """

    trainer: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    checkpoint_tag: str = ""
    loggers: list[Logger] | None = None
    progress: bool | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)

"""The Trainer factory: a fresh Lightning ``Trainer`` per fit, quiet, and the process probe.

Lightning owns devices, precision, seeding and distribution: every fit gets the user's
``trainer`` keyword arguments. :func:`process_context` asks Lightning, without launching
anything, which device and rank this process has (DDP is launched by Lightning itself,
``trainer.strategy=ddp``, ``trainer.devices=N``, or by torchrun / SLURM).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import Logger

from adaround_lightning.core.distributed import ProcessContext
from adaround_lightning.core.errors import UserError
from adaround_lightning.core.interrupt import STOP

__all__ = [
    "StopOnRequest",
    "inner_trainer",
    "inner_trainer_kwargs",
    "process_context",
    "quiet_lightning",
    "trainer_kwargs_with_defaults",
]

_SPAWNING = {"ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_spawn_find_unused_parameters_false"}


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's per-Trainer banners and hints while inner fits run."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*is an invalid value for `log_every_n_steps`.*")
        # The layer of the network being quantized stays in eval mode on purpose.
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def trainer_kwargs_with_defaults(trainer: dict[str, Any] | None) -> dict[str, Any]:
    kwargs = {"accelerator": "auto", "devices": 1}
    kwargs.update(trainer or {})
    return kwargs


class StopOnRequest(L.Callback):
    """End the fit after the current step once SIGINT or SIGTERM asked the walk to stop."""

    def on_train_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        if STOP.requested:
            trainer.should_stop = True


def inner_trainer(
    trainer_kwargs: dict[str, Any],
    steps: int,
    loggers: list[Logger] | None = None,
    callbacks: list[L.Callback] | None = None,
) -> L.Trainer:
    # A fresh Trainer per layer: a reused one keeps global_step and the next fit does nothing.
    # The loggers are shared by all layers (one run, one log dir; metrics prefixed per layer).
    return L.Trainer(
        max_steps=steps,
        max_epochs=1,
        logger=loggers or False,
        callbacks=[*(callbacks or []), StopOnRequest()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=max(1, steps),
        **trainer_kwargs,
    )


def process_context(trainer_kwargs: dict[str, Any]) -> ProcessContext:
    """Ask Lightning, without launching anything, where this process runs and which rank it is.

    Example:
        >>> process_context({"accelerator": "cpu", "devices": 1}).world_size
        1
    """
    strategy = trainer_kwargs.get("strategy")
    if isinstance(strategy, str) and strategy in _SPAWNING:
        raise UserError(
            f"trainer.strategy={strategy} re-imports the program in new processes and cannot run "
            "the Hydra app: use trainer.strategy=ddp"
        )
    try:
        with quiet_lightning():
            probe = L.Trainer(
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                **trainer_kwargs,
            )
    except (MisconfigurationException, ValueError, RuntimeError, TypeError) as error:
        # An accelerator this machine lacks, too many devices, an unknown strategy or argument.
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"the trainer settings do not fit this machine ({message}): check "
            "trainer.accelerator, trainer.devices and trainer.strategy (trainer.accelerator=cpu "
            "or auto always works)"
        ) from None
    set_world_ranks = getattr(probe.strategy, "set_world_ranks", None)
    if set_world_ranks is not None:
        set_world_ranks()  # reads LOCAL_RANK / NODE_RANK / torchrun / SLURM variables
    return ProcessContext(probe.strategy.root_device, probe.global_rank, probe.world_size)


def inner_trainer_kwargs(trainer_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Trainer arguments for one layer's fit: ``ddp`` without per-step buffer broadcasts.

    DDP broadcasts all module buffers from rank 0 before every forward by default. The layer
    module's buffers (the loss history, the beta schedule, the quantizer's grid) are identical on
    every rank or rank-local by design, so the broadcast would only cost time each step.
    """
    kwargs = dict(trainer_kwargs)
    if kwargs.get("strategy") == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        kwargs["strategy"] = DDPStrategy(broadcast_buffers=False)
    return kwargs

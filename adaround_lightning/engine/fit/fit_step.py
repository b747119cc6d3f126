"""The fit step: learn the rounding of one layer, or of one block jointly, in a fresh Trainer.

Pure in the sense of AutoRound's ``quantize_block``: it reads the cached inputs and targets of
the :class:`~adaround_lightning.engine.cache.activation_cache.CalibrationCache`, trains the given
quantizers'
``V`` and, when the fit ends, writes the hard-rounded weights ``s * q`` into the given layer or
block. It walks nothing, caches nothing and writes no files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

from adaround_lightning.core.interrupt import STOP
from adaround_lightning.engine.adaround_config import AdaroundConfig
from adaround_lightning.engine.cache.activation_cache import CalibrationCache, RandomBatches
from adaround_lightning.engine.cache.pairs import LayerPairs
from adaround_lightning.engine.engine_config import EngineConfig
from adaround_lightning.engine.fit.network_refinement import NetworkRefinement
from adaround_lightning.engine.fit.reconstruction import (
    BlockReconstruction,
    LayerReconstruction,
    RoundingReconstruction,
)
from adaround_lightning.engine.fit.trainer import (
    inner_trainer,
    inner_trainer_kwargs,
    quiet_lightning,
)
from adaround_lightning.engine.progress import CalibrationProgress
from adaround_lightning.quant.loss import AdaptiveRoundingLoss
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer

__all__ = [
    "CURVE_POINTS",
    "FitOutcome",
    "FitSettings",
    "RefinementOutcome",
    "fit_block",
    "fit_layer",
    "fit_network",
]

log = logging.getLogger(__name__)

#: Points kept of each fit's loss curve in the report.
CURVE_POINTS = 200

#: The refinement's rounding term: ``lambda`` per weight element (its loss is a mean over
#: samples, not a sum over channels as a block fit's), the annealed ``beta`` and ``h(V)`` at the
#: start; chosen on MobileNetV2 W2 (docs/refinement.md).
REFINE_REG_PARAM = 1e-5
REFINE_BETA_RANGE = (8.0, 2.0)
REFINE_START_H = 0.7


@dataclass(frozen=True)
class FitOutcome:
    """What one fit did.

    Attributes:
        steps: The steps the fit was planned for (its loss schedule's length).
        steps_run: The optimizer steps it took: fewer than ``steps`` when every ``h(V)`` was
            binary before the end (``adaround.stop_when_binary``).
        curve: ``[step, reconstruction, regularization]`` rows, at most :data:`CURVE_POINTS`.
    """

    steps: int
    steps_run: int
    curve: list[list[float]] = field(default_factory=list)

    @property
    def stopped_early(self) -> bool:
        """The fit ended before its last planned step."""
        return self.steps_run < self.steps


@dataclass(frozen=True)
class FitSettings:
    """What every fit of a calibration shares.

    Attributes:
        config: The optimisation settings (loss schedule, learning rate, steps per batch).
        trainer_kwargs: Keyword arguments of each fit's Lightning ``Trainer``.
        loggers: Lightning loggers shared by all fits (None: no logging).
        device: Where the fitted module goes back after Lightning's teardown.
        engine: Step scheduling (``steps_per_batch``, ``skip_settled``).
    """

    config: AdaroundConfig
    trainer_kwargs: dict[str, Any]
    loggers: list[Logger] | None
    device: torch.device
    engine: EngineConfig = field(default_factory=EngineConfig)

    def loss(self, steps: int) -> AdaptiveRoundingLoss:
        """The AdaRound loss of a fit of ``steps`` steps (eq. 25 with the schedule of eq. 24)."""
        config = self.config
        return AdaptiveRoundingLoss(
            max_iter=steps,
            warm_start=config.warm_start,
            beta_range=config.beta_range,
            reg_param=config.reg_param,
            reconstruction=config.reconstruction,
        )


def _run(
    module: RoundingReconstruction,
    cache: CalibrationCache | LayerPairs,
    steps: int,
    settings: FitSettings,
    bar: CalibrationProgress,
) -> FitOutcome:
    # A fresh Trainer per fit: a reused one keeps global_step and the next fit does nothing.
    bar.start_layer(module.name, steps)
    cache.num_steps = steps
    with quiet_lightning():
        # DDP without per-step buffer broadcasts: a fresh strategy object per Trainer.
        kwargs = inner_trainer_kwargs(settings.trainer_kwargs)
        trainer = inner_trainer(kwargs, steps, settings.loggers, [bar])
        try:
            trainer.fit(module, datamodule=cache)
        except SIGTERMException:  # Lightning's own SIGTERM handling; STOP has it too
            if not STOP.requested:
                raise
    # A stopped fit is not finished: its layer is dropped and redone on resume.
    STOP.check()
    # Lightning's teardown may move the fitted module to the CPU: put it back.
    module.to(settings.device).eval()
    outcome = FitOutcome(steps, module.steps_run, module.loss_curve(CURVE_POINTS))
    if outcome.stopped_early:
        log.info(
            "%s: every h(V) binary after %d of %d steps; the rest skipped (they cannot change "
            "a rounding)",
            module.name,
            outcome.steps_run,
            steps,
        )
    return outcome


def fit_layer(
    layer: nn.Module,
    quantizer: AdaroundFakeQuantizer,
    activation: nn.Module | None,
    input_quantizer: nn.Module | None,
    cache: CalibrationCache | LayerPairs,
    settings: FitSettings,
    name: str,
    bar: CalibrationProgress,
) -> FitOutcome:
    """Learn ``quantizer``'s ``V`` on the cached ``(x~, f_a(W x))`` of one layer (eq. 25).

    Returns:
        The steps taken and the loss curve.

    Example:
        >>> from adaround_lightning.quant.factory import quantizer_for_weight
        >>> layer = nn.Linear(4, 3).requires_grad_(False)
        >>> cache = CalibrationCache(torch.randn(16, 4), batch_size=8, num_steps=4)
        >>> cache.cache_block(layer, layer, layer, layer)
        >>> cache.cache_layer(layer, layer, layer, layer, activation=None, layer_index=0)
        >>> fq = quantizer_for_weight(layer.weight, 4, True, "minmax")
        >>> cpu = FitSettings(AdaroundConfig(iters=4, batch_size=8), {"accelerator": "cpu"},
        ...                   None, torch.device("cpu"), EngineConfig(steps_per_batch=1))
        >>> with CalibrationProgress(1, 0, False) as bar:
        ...     outcome = fit_layer(layer, fq, None, None, cache, cpu, "fc", bar)
        >>> layer.weight.equal(fq.hard_weight()), outcome.steps_run <= 4
        (True, True)
    """
    config = settings.config
    module = LayerReconstruction(
        layer,
        quantizer,
        settings.loss(config.iters),
        activation,
        config.lr_for(config.iters),
        name=name,
        steps_per_batch=settings.engine.steps_per_batch,
        input_quantizer=input_quantizer,
        stop_when_binary=config.stop_when_binary,
        scale_lr=config.scale_lr if config.learn_scale else None,
        skip_settled=settings.engine.skip_settled,
        straight_through=config.straight_through,
    )
    return _run(module, cache, config.iters, settings, bar)


def fit_block(
    block: nn.Module,
    quantizers: dict[str, AdaroundFakeQuantizer],
    steps: int,
    cache: CalibrationCache,
    settings: FitSettings,
    name: str,
    bar: CalibrationProgress,
) -> FitOutcome:
    """Learn every ``V`` of a block together on the cached ``(x~, B(x))`` (the block output).

    Args:
        block: The block of the quantized network.
        quantizers: Per layer name relative to the block, its initialised quantizer.
        steps: Optimisation steps of this fit.
        cache: Holds the block's quantized-network input and float output.
        settings: Shared fit settings.
        name: The block's name (prefix of the logged metrics).
        bar: Progress display.

    Returns:
        The steps taken and the loss curve.
    """
    config = settings.config
    module = BlockReconstruction(
        block,
        quantizers,
        settings.loss(steps),
        config.lr_for(steps),
        name=name,
        steps_per_batch=settings.engine.steps_per_batch,
        stop_when_binary=config.stop_when_binary,
        scale_lr=config.scale_lr if config.learn_scale else None,
        skip_settled=settings.engine.skip_settled,
        straight_through=config.straight_through,
    )
    return _run(module, cache, steps, settings, bar)


@dataclass(frozen=True)
class RefinementOutcome:
    """What the network-level refinement did.

    Attributes:
        steps: The steps it was planned for.
        steps_run: The steps it took (fewer once every ``h(V)`` was binary).
        flips: Weights whose rounding it changed.
        curve: ``[step, output, blocks, regularization]`` rows, at most :data:`CURVE_POINTS`.
    """

    steps: int
    steps_run: int
    flips: int
    curve: list[list[float]] = field(default_factory=list)


def fit_network(
    q_model: nn.Module,
    fp_model: nn.Module,
    quantizers: dict[str, AdaroundFakeQuantizer],
    blocks: list[str],
    images: torch.Tensor,
    batch_size: int,
    settings: FitSettings,
    bar: CalibrationProgress,
) -> RefinementOutcome:
    """Refine every layer's rounding together on the network's output (after the walk).

    Trains :class:`~adaround_lightning.engine.fit.network_refinement.NetworkRefinement` in a
    fresh Trainer on random batches of ``images`` (this process's calibration shard), then
    writes each quantizer's new ``V`` and each layer's ``s * q``.

    Example:
        >>> from adaround_lightning.quant.factory import quantizer_for_weight
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).requires_grad_(False)
        >>> fqs = {n: quantizer_for_weight(net.get_submodule(n).weight, 2, True, "minmax")
        ...        for n in ("0", "2")}
        >>> cpu = FitSettings(AdaroundConfig(batch_size=8, refine_steps=4), {"accelerator": "cpu"},
        ...                   None, torch.device("cpu"))
        >>> with CalibrationProgress(1, 0, False) as bar:
        ...     outcome = fit_network(net, net, fqs, [], torch.randn(16, 4), 8, cpu, bar)
        >>> outcome.steps_run <= 4
        True
    """
    config = settings.config
    steps = config.refinement_steps
    module = _refinement_module(q_model, fp_model, quantizers, blocks, config)
    batches = RandomBatches(
        images,
        torch.zeros(len(images), device=images.device),
        batch_size,
        steps,
        config.seed + 7_919,
    )
    bar.start_layer("refinement", steps)
    with quiet_lightning():
        trainer = inner_trainer(
            inner_trainer_kwargs(settings.trainer_kwargs), steps, settings.loggers, [bar]
        )
        try:
            trainer.fit(module, train_dataloaders=batches)
        except SIGTERMException:
            if not STOP.requested:
                raise
    STOP.check()  # a stopped refinement is not finished: it is redone on resume
    return RefinementOutcome(
        steps, module.steps_run, module.flips(), module.loss_curve(CURVE_POINTS)
    )


def _refinement_module(
    q_model: nn.Module,
    fp_model: nn.Module,
    quantizers: dict[str, AdaroundFakeQuantizer],
    blocks: list[str],
    config: AdaroundConfig,
) -> NetworkRefinement:
    loss = AdaptiveRoundingLoss(
        max_iter=config.refinement_steps,
        warm_start=config.warm_start,
        beta_range=REFINE_BETA_RANGE,
        reg_param=REFINE_REG_PARAM,
    )
    return NetworkRefinement(
        q_model,
        fp_model,
        quantizers,
        blocks,
        loss,
        config.refine_lr,
        config.refine_block_weight,
        REFINE_START_H,
        config.scale_lr if config.learn_scale else None,
    )

"""The walk's last weight phase: refine every layer's rounding together on the network's output.

:func:`refine_network` decides whether the refinement runs (``adaround.refine_bits`` against the
smallest bit width of the plan), restores it from a checkpoint, or runs the fit step
(:func:`~adaround_lightning.engine.fit.fit_step.fit_network`), measures the output divergence on
the calibration images before and after, checks the processes agree, and records it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from adaround_lightning.core.distributed import check_same_on_all_ranks
from adaround_lightning.engine.fit.fit_step import fit_network
from adaround_lightning.engine.fit.network_refinement import output_divergence
from adaround_lightning.engine.progress import CalibrationProgress
from adaround_lightning.engine.records.checkpoint import save_refinement
from adaround_lightning.engine.records.results import RefinementReport
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer

if TYPE_CHECKING:
    from adaround_lightning.torch_frontend.torch_walk import WalkContext

__all__ = ["KeptRefinement", "calibration_divergence", "refine_network", "refinement_batch"]

log = logging.getLogger("adaround_lightning.engine")

#: A refinement read from the checkpoint: its report, and per layer its ``V`` and scale.
KeptRefinement = tuple[RefinementReport, dict[str, dict[str, torch.Tensor]]]

#: Activations a backward pass holds per traced layer, in units of the largest one (a bound).
HELD_PER_LAYER = 2


@torch.no_grad()
def calibration_divergence(
    q_model: nn.Module, fp_model: nn.Module, images: torch.Tensor, chunk: int
) -> float:
    """The mean output divergence of ``q_model`` from ``fp_model`` on ``images``, in chunks.

    Example:
        >>> net = nn.Linear(4, 3)
        >>> calibration_divergence(net, net, torch.randn(10, 4), 4)
        0.0
    """
    total = 0.0
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk]
        total += float(output_divergence(q_model(x), fp_model(x))) * len(x)
    return total / max(1, len(images))


def refinement_batch(context: WalkContext) -> int:
    """``adaround.batch_size``, lowered so a step's activations fit the cache budget's share."""
    config, engine = context.config, context.engine
    per_sample = context.plan.trace.activation_bytes_per_sample
    layers = max(1, len(context.plan.trace.layers))
    if engine.cache_budget_gb is None or per_sample == 0:
        return context.batch_size
    budget = engine.cache_budget_gb * 2**30
    fits = max(1, int(budget // (per_sample * layers * HELD_PER_LAYER)))
    if fits < context.batch_size:
        log.info(
            "refinement: %d samples per step (adaround.batch_size=%d) so that a step's "
            "activations stay within engine.cache_budget_gb=%g",
            fits,
            config.batch_size,
            engine.cache_budget_gb,
        )
    return min(context.batch_size, fits)


def _block_names(context: WalkContext) -> list[str]:
    """The blocks fitted jointly in the walk (a layer on its own is no block here)."""
    return [block.name for block in context.plan.trace.blocks if block.is_module]


@torch.no_grad()
def _restore(
    context: WalkContext, quantizers: dict[str, AdaroundFakeQuantizer], kept: KeptRefinement
) -> RefinementReport:
    """Give the quantizers and layers the refined ``V`` and scale a checkpoint kept."""
    report, layers = kept
    device = context.process.device
    for name, quantizer in quantizers.items():
        quantizer.V = nn.Parameter(layers[name]["V"].to(device), requires_grad=False)
        quantizer.scale = layers[name]["scale"].to(device)
        layer = context.q_model.get_submodule(name)
        layer.weight.copy_(quantizer.hard_weight().to(layer.weight.dtype))
    report.resumed = True
    log.info("refinement: restored from the checkpoint (%d weights flipped)", report.flips)
    return report


def refine_network(
    context: WalkContext,
    quantizers: dict[str, AdaroundFakeQuantizer],
    kept: KeptRefinement | None = None,
    progress: bool | None = False,
) -> RefinementReport | None:
    """Refine every layer's rounding together, when ``adaround.refine_bits`` asks for it.

    Args:
        context: The walk's context (networks, images, settings, checkpoint folder).
        quantizers: Per quantized layer, its finished quantizer; refined in place.
        kept: The refinement a checkpoint of these settings holds (restored, not retrained).
        progress: Show a progress bar.

    Returns:
        The refinement's report, or None where it does not run.
    """
    config = context.config
    if not quantizers:
        return None
    bits = min(q.bits for q in quantizers.values())
    if not config.refines(bits):
        log.info("refinement: off at W%d (adaround.refine_bits=%s)", bits, config.refine_bits)
        return None
    if kept is not None:
        return _restore(context, quantizers, kept)
    start = time.perf_counter()
    chunk = context.forward_batch_size
    images = context.images
    before = calibration_divergence(context.q_model, context.fp_model, images, chunk)
    blocks = _block_names(context)
    batch = refinement_batch(context)
    with CalibrationProgress(1, 0, progress) as bar:
        outcome = fit_network(
            context.q_model, context.fp_model, quantizers, blocks, images, batch, context.fit, bar
        )
    for name, quantizer in quantizers.items():
        check_same_on_all_ranks(quantizer.integer_weight(), name, context.process)
    after = calibration_divergence(context.q_model, context.fp_model, images, chunk)
    elements = sum(q.V.numel() for q in quantizers.values())
    report = RefinementReport(
        bits=bits,
        steps=outcome.steps,
        steps_run=outcome.steps_run,
        flips=outcome.flips,
        flipped_fraction=outcome.flips / max(1, elements),
        divergence_before=before,
        divergence_after=after,
        seconds=time.perf_counter() - start,
        batch_size=batch,
        block_weight=config.refine_block_weight,
        blocks=len(blocks),
        loss_curve=outcome.curve,
    )
    _log_refinement(report)
    if context.checkpoint is not None:
        save_refinement(context.checkpoint, context.checkpoint_tag, report, quantizers)
    return report


def _log_refinement(report: RefinementReport) -> None:
    log.info(
        "refinement: %d of %d steps, %d weights flipped (%.3f%%), output divergence on the "
        "calibration images %.4g -> %.4g, %.1f s",
        report.steps_run,
        report.steps,
        report.flips,
        100 * report.flipped_fraction,
        report.divergence_before,
        report.divergence_after,
        report.seconds,
    )

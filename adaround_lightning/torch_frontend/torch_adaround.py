"""The PyTorch front end: :func:`adaround_module` quantizes a network's weights, block by block.

It builds the walk's read-only context (:func:`prepare_walk`: this process's calibration
shard, the float and quantized networks, the plan, the restored checkpoint) and runs the
orchestrator, :class:`~adaround_lightning.torch_frontend.torch_walk.CalibrationWalk`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from adaround_lightning.core.host_memory import keep_freed_host_memory
from adaround_lightning.engine.adaround_config import AdaroundConfig, Granularity
from adaround_lightning.engine.cache.inputs import calibration_tensor, shard_for_process
from adaround_lightning.engine.cache.storage import FORWARD_SHARE, CacheAllocator
from adaround_lightning.engine.cache.stream import plan_stream
from adaround_lightning.engine.engine_config import EngineConfig
from adaround_lightning.engine.fit.fit_step import FitSettings
from adaround_lightning.engine.fit.trainer import process_context, trainer_kwargs_with_defaults
from adaround_lightning.engine.mixed.choose import weight_footprint
from adaround_lightning.engine.records.checkpoint import (
    LayerCheckpoint,
    load_progress,
    load_refinement,
)
from adaround_lightning.engine.records.coverage import WeightCoverage, weight_coverage
from adaround_lightning.engine.records.results import CacheReport
from adaround_lightning.engine.walk_options import WalkOptions
from adaround_lightning.graph.trace import replay_block_arguments
from adaround_lightning.quant.quant_config import QuantConfig
from adaround_lightning.torch_frontend.embeddings import round_input_embedding
from adaround_lightning.torch_frontend.mixed_plan import plan_with_budget
from adaround_lightning.torch_frontend.networks import float_and_quantized
from adaround_lightning.torch_frontend.plan import CalibrationPlan, plan_calibration
from adaround_lightning.torch_frontend.refinement_phase import KeptRefinement
from adaround_lightning.torch_frontend.torch_result import AdaroundResult
from adaround_lightning.torch_frontend.torch_walk import CalibrationWalk, WalkContext

__all__ = ["CalibrationData", "adaround_module", "prepare_walk"]

log = logging.getLogger(__name__)

#: The disk tier's folder, beside the checkpoints (in the app: inside the run dir).
CACHE_DIR = "cache"

CalibrationData = torch.Tensor | Dataset | DataLoader | Iterable[Any]


#: How many of a network's largest activations a forward holds at once (input, output, a
#: residual); a forward chunk's take of the budget is ``FORWARD_SHARE`` (storage).
LIVE_ACTIVATIONS = 4


def _forward_chunk(engine: EngineConfig, activation_bytes_per_sample: int) -> int:
    """``engine.forward_batch_size``, lowered under a cache budget so a chunk fits its share."""
    if engine.cache_budget_gb is None or activation_bytes_per_sample == 0:
        return engine.forward_batch_size
    share = engine.cache_budget_gb * 2**30 * FORWARD_SHARE
    fits = int(share // (activation_bytes_per_sample * LIVE_ACTIVATIONS))
    chunk = max(1, min(engine.forward_batch_size, fits))
    if chunk < engine.forward_batch_size:
        log.info(
            "forward passes in chunks of %d samples (engine.forward_batch_size=%d) to stay "
            "within engine.cache_budget_gb=%g",
            chunk,
            engine.forward_batch_size,
            engine.cache_budget_gb,
        )
    return chunk


def _cache_allocator(
    engine: EngineConfig, device: torch.device, checkpoint: Path | None
) -> CacheAllocator:
    """Where cached activations live; the disk tier's folder sits beside the checkpoints."""
    budget = None if engine.cache_budget_gb is None else int(engine.cache_budget_gb * 2**30)
    return CacheAllocator(
        device,
        engine.cache_device,
        budget,
        engine.cache_dtype,
        checkpoint.parent / CACHE_DIR if checkpoint else None,
        channels_last=engine.channels_last,
    )


def prepare_walk(
    model: nn.Module,
    calibration_data: CalibrationData,
    quant: QuantConfig,
    config: AdaroundConfig,
    options: WalkOptions,
) -> tuple[WalkContext, dict[str, LayerCheckpoint]]:
    """The walk's context and the layers a checkpoint has already finished.

    Arguments as for :func:`~adaround_lightning.api.adaround`. Every process reads the
    checkpoint; only rank 0 writes checkpoints and logs (the context of the others has neither).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
        >>> context, finished = prepare_walk(net, torch.randn(32, 4), QuantConfig(),
        ...     AdaroundConfig(batch_size=16), WalkOptions({"accelerator": "cpu"}))
        >>> context.plan.total_layers, context.batch_size, finished
        (2, 16, {})
    """
    checkpoint, loggers, engine = options.checkpoint, options.loggers, options.engine
    trainer_kwargs = trainer_kwargs_with_defaults(options.trainer)
    process = process_context(trainer_kwargs)
    images = calibration_tensor(calibration_data, config.num_samples)
    inputs = shard_for_process(images, config.batch_size, process)
    example = inputs.images[:2]
    fp_model, q_model = float_and_quantized(model, example)
    plan = plan_calibration(fp_model, example, quant, tuple(config.blocks))
    plan, allocation = plan_with_budget(  # under a budget: bits from measured sensitivity
        plan, fp_model, images, quant, process, checkpoint, options.checkpoint_tag
    )
    for network in (fp_model, q_model):  # blocks called with constants besides their input
        replay_block_arguments(network, plan.trace.replayed)
    _log_blocks(plan, config, process.is_main)
    blocks = [block.name for block in plan.trace.blocks]
    stream = plan_stream(fp_model, blocks, example) if engine.stream else None
    allocator = _cache_allocator(engine, process.device, checkpoint)
    finished, kept = _kept(checkpoint, options.checkpoint_tag)
    if not process.is_main:  # one process writes
        checkpoint, loggers = None, None
    context = WalkContext(
        quant=quant,
        config=config,
        engine=engine,
        process=process,
        plan=plan,
        fp_model=fp_model,
        q_model=q_model,
        images=inputs.images,
        batch_size=inputs.batch_size,
        fit=FitSettings(config, trainer_kwargs, loggers, process.device, engine),
        checkpoint=checkpoint,
        checkpoint_tag=options.checkpoint_tag,
        allocator=allocator,
        stream=stream,
        forward_batch_size=_forward_chunk(engine, plan.trace.activation_bytes_per_sample),
        allocation=allocation,
        kept_refinement=kept,
        rounded=round_input_embedding(q_model, quant),  # before the walk runs q_model
    )
    return context, finished


def _kept(
    checkpoint: Path | None, tag: str
) -> tuple[dict[str, LayerCheckpoint], KeptRefinement | None]:
    """The finished layers and the finished refinement a checkpoint holds (every process)."""
    if checkpoint is None:
        return {}, None
    return load_progress(checkpoint, tag), load_refinement(checkpoint, tag)


def _log_blocks(plan: CalibrationPlan, config: AdaroundConfig, is_main: bool) -> None:
    """Say which layers block reconstruction fits together, and warn when none are (rank 0)."""
    if config.granularity != Granularity.BLOCK or not is_main:
        return
    joint = [b for b in plan.trace.blocks if b.is_module]
    alone = [
        b.layers[0].name
        for b in plan.trace.blocks
        if b not in joint and b.layers[0].name not in plan.skipped  # left in float: said so
    ]
    in_blocks = sum(len(b.layers) for b in joint)
    if not joint and len(plan.trace.layers) > 1:
        log.warning(
            "adaround.granularity=block, but no block of this model is known or found from its "
            "structure: all %d layers are fitted one by one (layer-wise); declare its blocks "
            "with adaround.blocks=[PATTERN] (module or class names, e.g. [EncoderBlock])",
            len(plan.trace.layers),
        )
        return
    found = plan.trace.discovered
    if found:
        log.info(
            "blocks found from the model's structure: %d (%s)",
            len(found),
            ", ".join(found[:4]) + (" ..." if len(found) > 4 else ""),
        )
    log.info(
        "block reconstruction: %d layers in %d blocks; %d fitted on their own: %s",
        in_blocks,
        len(joint),
        len(alone),
        ", ".join(alone[:6]) + (" ..." if len(alone) > 6 else ""),
    )


def _log_cache(cache: CacheReport) -> None:
    log.info(
        "activation cache (%s, %s): peak %s; %d full-network passes, %d streamed block passes, "
        "%d block outputs reused as inputs, %d restarts; caching %.1f s",
        cache.device,
        cache.dtype,
        ", ".join(f"{tier} {n / 2**30:.2f} GiB" for tier, n in cache.peak_bytes.items()) or "none",
        cache.full_network_passes,
        cache.streamed_block_passes,
        cache.reused_block_outputs,
        cache.restarts,
        cache.seconds,
    )


def _warn_left_in_float(coverage: WeightCoverage) -> None:
    if coverage.left_in_float:
        log.warning(
            "%.2f%% of the Conv/Linear/attention weight elements are quantized; left in float: %s",
            100 * coverage.fraction,
            "; ".join(f"{n} ({r})" for n, r in list(coverage.left_in_float.items())[:8])
            + (" ..." if len(coverage.left_in_float) > 8 else ""),
        )


def adaround_module(
    model: nn.Module,
    calibration_data: CalibrationData,
    quant: QuantConfig,
    config: AdaroundConfig,
    options: WalkOptions,
) -> AdaroundResult:
    """The PyTorch front end of :func:`~adaround_lightning.api.adaround`: block by block.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
        >>> result = adaround_module(net, torch.randn(32, 4), QuantConfig(),
        ...     AdaroundConfig(iters=4, batch_size=16), WalkOptions({"accelerator": "cpu"}))
        >>> [report.name for report in result.layers]
        ['0', '2']
    """
    start_time = time.perf_counter()
    if options.engine.reuse_host_memory:
        keep_freed_host_memory()
    context, finished = prepare_walk(model, calibration_data, quant, config, options)
    # One process shows progress.
    walk = CalibrationWalk(context, options.progress if context.process.is_main else False)
    state = walk.run(finished)
    cache = walk.cache_report()
    _log_cache(cache)
    coverage = weight_coverage(
        context.fp_model, state.quantizers, context.plan.skipped, context.plan.functional
    )
    _warn_left_in_float(coverage)
    quantizers = {**context.rounded, **state.quantizers}
    return AdaroundResult(
        model=context.q_model,
        float_model=context.fp_model,
        quantizers=quantizers,
        layers=state.reports,
        skipped=dict(context.plan.skipped),
        seconds=time.perf_counter() - start_time,
        act_quantizers=state.act_quantizers,
        cache=cache,
        coverage=coverage,
        bit_allocation=context.allocation,
        refinement=state.refinement,
        footprint=weight_footprint(
            context.fp_model, {n: q.bits for n, q in quantizers.items()}, quant
        ),
    )

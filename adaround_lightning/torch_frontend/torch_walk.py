"""The orchestrator: walk the network block by block and calibrate every layer.

:class:`CalibrationWalk` owns the infrastructure around the pure fit step
(:mod:`~adaround_lightning.engine.fit.fit_step`): which activations are cached when, resume,
checkpoints, DDP agreement checks, progress and logs. Its phases, one method each:

=====================  ==========================================================================
phase                  what it does
=====================  ==========================================================================
``restore``            layers finished in a checkpoint get ``s * q`` (and their bias) back
``cache_block``        the block's input in the float and in the quantized network
``fit_block_jointly``  one fit for all of a block's layers: the block output error (BRECQ)
``fit_one_layer``      one fit per layer: its output error (AdaRound as published)
``finish_layer``       report (MSEs), agreement check, checkpoint, log
``refine_network``     every rounding together on the network's output (``adaround.refine_bits``)
``calibrate_inputs``   activation grids after the walk (AIMET's order), unless in the loop
=====================  ==========================================================================

Later layers see the rounded earlier ones: asymmetric reconstruction, paper eq. (25).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from adaround_lightning.core.distributed import ProcessContext, check_same_on_all_ranks
from adaround_lightning.core.errors import UserError
from adaround_lightning.core.gc_freeze import existing_objects_frozen
from adaround_lightning.core.host_memory import release_freed_host_memory
from adaround_lightning.core.interrupt import STOP, stoppable_walk
from adaround_lightning.engine.adaround_config import AdaroundConfig, Granularity
from adaround_lightning.engine.cache.activation_cache import CalibrationCache
from adaround_lightning.engine.cache.storage import CacheAllocator
from adaround_lightning.engine.cache.stream import StreamPlan
from adaround_lightning.engine.engine_config import EngineConfig
from adaround_lightning.engine.fit.fisher import (
    FisherSums,
    block_output_sensitivity,
    float_log_probabilities,
)
from adaround_lightning.engine.fit.fit_step import FitOutcome, FitSettings, fit_block, fit_layer
from adaround_lightning.engine.input_grids import calibrate_input_grids
from adaround_lightning.engine.layer_steps import (
    correct_bias,
    corrected_bias,
    corrects_bias,
    layer_checkpoint,
    log_finished_layer,
    restore_layer,
)
from adaround_lightning.engine.mixed.choose import BitAllocation
from adaround_lightning.engine.progress import CalibrationProgress
from adaround_lightning.engine.records.checkpoint import LayerCheckpoint, save_layer_progress
from adaround_lightning.engine.records.layer_report import layer_report, output_mse
from adaround_lightning.engine.records.results import CacheReport, LayerReport, RefinementReport
from adaround_lightning.graph.bias_correction import BiasCorrection
from adaround_lightning.graph.capture import capture_output
from adaround_lightning.graph.functional import forward_with_weight, functional_activation
from adaround_lightning.graph.trace import Block, LayerInfo
from adaround_lightning.quant.activations import (
    ActivationQuantizer,
    attach_input_quantizers,
    observe_inputs,
)
from adaround_lightning.quant.factory import layer_quantizer
from adaround_lightning.quant.quant_config import QuantConfig
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer
from adaround_lightning.torch_frontend.plan import CalibrationPlan
from adaround_lightning.torch_frontend.refinement_phase import KeptRefinement, refine_network

__all__ = ["CalibrationWalk", "WalkContext", "WalkState"]

log = logging.getLogger(__name__)

#: Samples of the per-layer report (MSE nearest vs AdaRound) of a layer fitted in a block and
#: not bias-corrected: the report is all that pass is for, and on a decoder layer a pass per
#: layer over every sample took a fifth of the calibration (45 of 244 s, 12.6M Llama, W3).
REPORT_SAMPLES = 32


@dataclass(frozen=True)
class WalkContext:
    """What every phase of the walk reads and none changes.

    Attributes:
        quant: Bits and layer selection.
        config: Optimisation settings.
        engine: How the calibration runs.
        process: This process's device and rank.
        plan: Layers, blocks and bits.
        fp_model: The BN-folded float reference.
        q_model: The network being quantized (its layers are rounded as the walk goes).
        images: This process's calibration shard, on its device.
        batch_size: Samples per step on this process (the global batch over the processes).
        fit: What every fit shares.
        checkpoint: Folder of the progress checkpoints (None: none written, e.g. DDP rank > 0).
        checkpoint_tag: Fingerprint of the settings, stored with each checkpoint.
        allocator: Where cached activations live (None: float32 on the compute device).
        stream: Which block inputs follow from the previous block's (None: all from the images).
        forward_batch_size: Chunk of the forward passes that fill the cache.
        allocation: The bits a budget chose (``quant.average_bits``/``max_size_mb``), if any.
        kept_refinement: The network-level refinement a checkpoint of these settings holds.
        rounded: Weights rounded to nearest before the walk, by module name (the input
            embedding with ``quant.quantize_embeddings``); never fitted.
    """

    quant: QuantConfig
    config: AdaroundConfig
    engine: EngineConfig
    process: ProcessContext
    plan: CalibrationPlan
    fp_model: nn.Module
    q_model: nn.Module
    images: torch.Tensor
    batch_size: int
    fit: FitSettings
    checkpoint: Path | None = None
    checkpoint_tag: str = ""
    allocator: CacheAllocator | None = None
    stream: StreamPlan | None = None
    forward_batch_size: int = 256
    allocation: BitAllocation | None = None
    kept_refinement: KeptRefinement | None = None
    rounded: dict[str, AdaroundFakeQuantizer] = field(default_factory=dict)

    @property
    def act_in_loop(self) -> bool:
        """Activation grids are calibrated block by block and used in the fits (QDrop)."""
        return self.quant.act_bits is not None and self.config.act_in_loop

    def activation_of(self, info: LayerInfo) -> nn.Module | None:
        """A non-in-place copy of the activation in ``info``'s target, or None."""
        if info.activation and self.config.include_activation:
            return functional_activation(self.fp_model.get_submodule(info.activation))
        return None


@dataclass
class WalkState:
    """What the walk has produced so far.

    Attributes:
        quantizers: Per finished layer, its quantizer.
        act_quantizers: Per layer, its input quantizer (activation quantization).
        reports: Per finished layer, its report, in calibration order.
        finished: Per finished layer, its checkpoint record (only when checkpoints are written,
            or restored).
        refinement: What the network-level refinement after the walk did (None: not run).
    """

    quantizers: dict[str, AdaroundFakeQuantizer] = field(default_factory=dict)
    act_quantizers: dict[str, ActivationQuantizer] = field(default_factory=dict)
    reports: list[LayerReport] = field(default_factory=list)
    finished: dict[str, LayerCheckpoint] = field(default_factory=dict)
    refinement: RefinementReport | None = None


def _oom_message(where: str, images: torch.Tensor) -> str:
    return (
        f"out of memory while caching the activations of {where} for {images.shape[0]} "
        f"calibration samples: lower adaround.num_samples or engine.forward_batch_size, "
        "or cache on the CPU with trainer.accelerator=cpu"
    )


@dataclass(frozen=True)
class _AgainstQuantized:
    """Feeds a bias correction from the caching pass of a layer.

    Each chunk of the float layer's output meets the rounded layer's output on the same rows of
    the cached ``x~``.
    """

    correction: BiasCorrection
    q_layer: nn.Module
    cache: CalibrationCache

    def __call__(self, start: int, float_output: torch.Tensor) -> None:
        assert self.cache.inputs is not None
        x = self.cache.inputs[start : start + float_output.shape[0]]
        self.correction.add(float_output, forward_with_weight(self.q_layer, x, self.q_layer.weight))


@contextlib.contextmanager
def _at_nearest(q_model: nn.Module, quantizers: dict[str, AdaroundFakeQuantizer]) -> Iterator[None]:
    """The layers of ``quantizers`` hold their round-to-nearest weights inside the block."""
    layers = {name: q_model.get_submodule(name) for name in quantizers}
    floats = {name: layer.weight.detach().clone() for name, layer in layers.items()}
    try:
        with torch.no_grad():
            for name, layer in layers.items():
                layer.weight.copy_(quantizers[name].nearest_weight().to(layer.weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for name, layer in layers.items():
                layer.weight.copy_(floats[name])


@dataclass
class _FisherPass:
    """Rows of a block's ``g^2`` for :meth:`CalibrationCache.cache_fisher_weights`."""

    q_model: nn.Module
    q_block: nn.Module
    images: torch.Tensor
    float_log_probs: torch.Tensor
    sums: FisherSums = field(default_factory=FisherSums)

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        return block_output_sensitivity(
            self.q_model, self.q_block, self.images, self.float_log_probs, start, stop, self.sums
        )


class CalibrationWalk:
    """Walks the blocks of :attr:`WalkContext.plan` in order and calibrates every layer.

    Args:
        context: Read-only state shared by every phase.
        progress: Show rich progress bars; None shows them on an interactive terminal.

    Example:
        >>> from adaround_lightning.torch_frontend.torch_adaround import prepare_walk
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
        >>> from adaround_lightning.engine.walk_options import WalkOptions
        >>> context, finished = prepare_walk(net, torch.randn(32, 4), QuantConfig(),
        ...     AdaroundConfig(iters=2, batch_size=16), WalkOptions({"accelerator": "cpu"}))
        >>> state = CalibrationWalk(context, progress=False).run(finished)
        >>> [report.name for report in state.reports]
        ['0', '2']
    """

    def __init__(self, context: WalkContext, progress: bool | None = None) -> None:
        self.context = context
        config = context.config
        self.cache = CalibrationCache(
            context.images,
            batch_size=context.batch_size,
            num_steps=config.iters,
            seed=config.seed + 1_000_003 * context.process.rank,
            forward_batch_size=context.forward_batch_size,
            steps_per_batch=context.engine.steps_per_batch,
            allocator=context.allocator,
            stream=context.stream,
        )
        self.state = WalkState()
        #: ``log softmax`` of the float network's output on the images (``adaround.fisher``).
        self.float_log_probs: torch.Tensor | None = None
        self.progress = progress
        self.bar = CalibrationProgress(context.plan.total_layers, 0, False)

    # ------------------------------------------------------------------ the walk
    def run(self, finished: dict[str, LayerCheckpoint] | None = None) -> WalkState:
        """Restore ``finished`` layers, calibrate the rest block by block, then input grids."""
        self.restore(finished or {})
        context = self.context
        done = len(self.state.quantizers)
        self.bar = CalibrationProgress(context.plan.total_layers, done, self.progress)
        total = context.plan.total_layers
        try:
            with (
                self.bar,
                stoppable_walk(total, lambda: len(self.state.reports)),
                existing_objects_frozen(),  # release_fit_memory's collections stay cheap
            ):
                for block in self.blocks_to_walk():
                    STOP.check()  # SIGINT / SIGTERM: stop between blocks
                    self.calibrate_block(block)
                    self.release_fit_memory()
        finally:
            self.cache.release()
            self.cache.allocator.close()
        self.state.refinement = refine_network(
            context, self.state.quantizers, context.kept_refinement, self.progress
        )
        if context.quant.act_bits is not None and not context.act_in_loop:
            self.calibrate_inputs()
        return self.state

    def release_fit_memory(self) -> None:
        """Free what a block's fit left, so that memory does not creep block after block.

        ``V``'s gradients, the Trainer's reference cycles (which hold its optimizer state) and
        the heap's free pages: on a 12.6M-parameter Llama the peak fell from 1.45 to 1.29 GiB.
        Inside :func:`~adaround_lightning.core.gc_freeze.existing_objects_frozen` the
        collection traverses only the objects the walk made (0.26 s a block otherwise).
        """
        for quantizer in self.state.quantizers.values():
            quantizer.V.grad = None
        gc.collect()
        release_freed_host_memory()

    def blocks_to_walk(self) -> list[Block]:
        """The blocks in order, up to the last one with a layer left to fit."""
        blocks = self.context.plan.trace.blocks
        done = set(self.context.plan.skipped) | set(self.state.quantizers)
        todo = [k for k, b in enumerate(blocks) if any(i.name not in done for i in b.layers)]
        return blocks[: todo[-1] + 1] if todo else []

    def cache_report(self) -> CacheReport:
        """Where the cache lived, its peak bytes per tier, and the passes the walk made."""
        cache, engine = self.cache, self.context.engine
        usage, passes = cache.allocator.usage, cache.passes
        return CacheReport(
            device=str(engine.cache_device),
            dtype=str(engine.cache_dtype),
            budget_bytes=cache.allocator.budget_bytes,
            peak_bytes={tier: n for tier, n in usage.peak.items() if n > 0},
            buffers=dict(usage.buffers),
            full_network_passes=passes.full,
            streamed_block_passes=passes.streamed,
            reused_block_outputs=passes.reused,
            restarts=passes.restarts,
            forward_batch_size=cache.forward_batch_size,
            seconds=round(passes.seconds, 3),
        )

    def restore(self, finished: dict[str, LayerCheckpoint]) -> None:
        """Give the finished layers of a checkpoint ``s * q``, their bias and input grid back."""
        context, device = self.context, self.context.process.device
        for info in context.plan.trace.layers:  # in calibration order
            entry = finished.get(info.name)
            if entry is None:
                continue
            q_layer = context.q_model.get_submodule(info.name)
            self.state.quantizers[info.name] = restore_layer(q_layer, entry, device)
            if entry.act_state is not None:
                act_quantizer = entry.act_state.to_quantizer(device)
                self.state.act_quantizers[info.name] = act_quantizer
                attach_input_quantizers(context.q_model, {info.name: act_quantizer})
            self.state.reports.append(entry.report)
        self.state.finished = dict(finished)
        if finished:
            log.info("resuming after %d finished layers", len(finished))

    def calibrate_block(self, block: Block) -> None:
        """Cache the block's input, fit its unfinished layers, keep its input for the next."""
        context, cache = self.context, self.cache
        done = set(context.plan.skipped) | set(self.state.quantizers)
        todo = [info for info in block.layers if info.name not in done]
        if not todo and not cache.can_stream_to(block.name):
            cache.release()  # nothing to fit, and no cached input to carry through it
            return
        fp_block = context.fp_model.get_submodule(block.name)
        q_block = context.q_model.get_submodule(block.name)
        self.cache_block(block, fp_block, q_block)
        if not todo:  # finished or left in float: streamed through for the next block
            return
        if context.config.granularity == Granularity.BLOCK and block.is_module:
            self.fit_block_jointly(block, todo, fp_block, q_block)
        else:
            for info in todo:
                self.fit_one_layer(info, fp_block, q_block)
        cache.release_layer()  # the block inputs stay: the next block may follow from them

    # ------------------------------------------------------------------ caching
    def cache_block(self, block: Block, fp_block: nn.Module, q_block: nn.Module) -> None:
        """The block's input in both networks (one pass each, stopping at the block)."""
        context = self.context
        try:
            self.cache.cache_block(context.fp_model, context.q_model, fp_block, q_block, block.name)
        except torch.OutOfMemoryError:
            raise UserError(_oom_message(block.name, context.images)) from None

    def cache_layer(
        self,
        info: LayerInfo,
        fp_block: nn.Module,
        q_block: nn.Module,
        correction: BiasCorrection | None = None,
        samples: int | None = None,
    ) -> None:
        """A layer's quantized input ``x~`` and float target ``f_a(W x)``, from the block inputs.

        With ``correction``, the same pass feeds the bias correction: each chunk of the float
        layer's output against the quantized layer's output on the cached ``x~``. ``samples``:
        the first so many calibration samples only (None: all).
        """
        context = self.context
        q_layer = context.q_model.get_submodule(info.name)
        feed = None if correction is None else _AgainstQuantized(correction, q_layer, self.cache)
        try:
            self.cache.cache_layer(
                fp_block,
                q_block,
                context.fp_model.get_submodule(info.name),
                q_layer,
                context.activation_of(info),
                len(self.state.reports),
                feed,
                samples,
            )
        except torch.OutOfMemoryError:
            raise UserError(_oom_message(info.name, context.images)) from None
        except ValueError as error:
            raise UserError(f"layer {info.name!r}: {error}") from None

    # ------------------------------------------------------------------ fitting
    def new_quantizer(self, info: LayerInfo) -> AdaroundFakeQuantizer:
        """The layer's quantizer, initialised from its weight in the quantized network."""
        quant = self.context.quant
        weight = self.context.q_model.get_submodule(info.name).weight
        bits = self.context.plan.bits[info.name]
        return layer_quantizer(info.name, weight, bits, quant)

    def fit_block_jointly(
        self, block: Block, todo: list[LayerInfo], fp_block: nn.Module, q_block: nn.Module
    ) -> None:
        """One fit of every unfinished layer of ``block`` on the block output error."""
        context, config = self.context, self.context.config
        start = time.perf_counter()
        new = {info.name: self.new_quantizer(info) for info in todo}
        prefix = f"{block.name}."
        steps = config.block_steps(len(todo))
        self.cache.cache_block_output(fp_block, len(self.state.reports))
        self.cache.keep_block_output()  # the next block's float input, when it is B(x)
        if config.fisher:
            self.weigh_by_fisher(block.name, q_block, new)
        if context.act_in_loop:
            assert self.cache.q_block_inputs is not None
            in_loop = self.input_quantizers(list(new), q_block, self.cache.q_block_inputs, prefix)
            for act_quantizer in in_loop.values():
                act_quantizer.drop_prob = config.drop_prob
            attach_input_quantizers(context.q_model, in_loop)
            self.state.act_quantizers.update(in_loop)
        relative = {name[len(prefix) :]: quantizer for name, quantizer in new.items()}
        outcome = fit_block(q_block, relative, steps, self.cache, context.fit, block.name, self.bar)
        for name in new if context.act_in_loop else ():
            self.state.act_quantizers[name].drop_prob = 0.0
        seconds = (time.perf_counter() - start) / len(todo)
        for info in todo:
            # One pass per layer gives its report's x~ and f_a(W x) and its bias correction;
            # without a correction the report alone needs it, on REPORT_SAMPLES samples.
            correction = self.bias_correction(info)
            samples = None if correction is not None else REPORT_SAMPLES
            self.cache_layer(info, fp_block, q_block, correction, samples)
            if correction is not None:
                correction.apply()
            self.finish_layer(info, new[info.name], seconds, outcome, block.name)

    def weigh_by_fisher(
        self, name: str, q_block: nn.Module, new: dict[str, AdaroundFakeQuantizer]
    ) -> None:
        """Weigh the block fit's error by the Fisher information of the block's output.

        ``g`` comes from one pass of the quantized network with the block at round-to-nearest
        (BRECQ's state at the start of the fit), differentiated through the network's tail.
        """
        context = self.context
        start = time.perf_counter()
        try:
            if self.float_log_probs is None:
                self.float_log_probs = float_log_probabilities(
                    context.fp_model, context.images, context.forward_batch_size
                )
                self.cache.passes.full += 1
            rows = _FisherPass(context.q_model, q_block, context.images, self.float_log_probs)
            with _at_nearest(context.q_model, new):
                weighted = self.cache.cache_fisher_weights(
                    rows, lambda: rows.sums.mean(context.process), context.config.fisher_damping
                )
        except ValueError as error:
            raise UserError(f"block {name!r}: {error}") from None
        except torch.OutOfMemoryError:
            raise UserError(_oom_message(name, context.images)) from None
        self.cache.passes.full += 1
        if weighted:
            log.debug("%s: Fisher weights in %.2fs", name, time.perf_counter() - start)
        else:
            log.info(
                "%s: the network's output does not move with this block's output on the "
                "calibration data (all gradients 0): its fit uses the unweighted error",
                name,
            )

    def fit_one_layer(self, info: LayerInfo, fp_block: nn.Module, q_block: nn.Module) -> None:
        """One fit of one layer on its output error."""
        context = self.context
        if context.config.fisher:
            log.info("%s: fitted alone, on its unweighted output error (no Fisher)", info.name)
        start = time.perf_counter()
        self.cache_layer(info, fp_block, q_block)
        quantizer = self.new_quantizer(info)
        act_quantizer = None
        if context.act_in_loop:
            # Calibrated on what the quantized network feeds this layer.
            assert self.cache.inputs is not None
            act_quantizer = self.input_quantizers(
                [info.name], nn.Identity(), self.cache.inputs, prefix=info.name
            )[info.name]
            act_quantizer.drop_prob = context.config.drop_prob
        q_layer = context.q_model.get_submodule(info.name)
        activation = context.activation_of(info)
        outcome = fit_layer(
            q_layer,
            quantizer,
            activation,
            act_quantizer,
            self.cache,
            context.fit,
            info.name,
            self.bar,
        )
        if act_quantizer is not None:
            act_quantizer.drop_prob = 0.0
            self.state.act_quantizers[info.name] = act_quantizer
            attach_input_quantizers(context.q_model, {info.name: act_quantizer})
        if corrects_bias(context.config.bias_correction, q_layer):
            self.correct_layer_bias(info, fp_block, act_quantizer)
        seconds = time.perf_counter() - start
        self.finish_layer(info, quantizer, seconds, outcome)

    def input_quantizers(
        self, names: list[str], network: nn.Module, inputs: torch.Tensor, prefix: str = ""
    ) -> dict[str, ActivationQuantizer]:
        """Input quantizers of ``names``, calibrated by running ``network`` on ``inputs``."""
        context = self.context

        def observe(grids: dict[str, ActivationQuantizer]) -> None:
            relative = {name[len(prefix) :]: grid for name, grid in grids.items()}
            observe_inputs(network, relative, inputs, context.forward_batch_size)

        return calibrate_input_grids(names, context.quant, observe, context.process)

    def calibrate_inputs(self) -> None:
        """AIMET's order: weights first, then the activation grids of the quantized network."""
        context = self.context
        self.cache.passes.full += 1
        names = [
            info.name for info in context.plan.trace.layers if info.name in self.state.quantizers
        ]
        self.state.act_quantizers = self.input_quantizers(names, context.q_model, context.images)
        attach_input_quantizers(context.q_model, self.state.act_quantizers)

    # ------------------------------------------------------------------ finishing
    def bias_correction(self, info: LayerInfo) -> BiasCorrection | None:
        """An empty correction of the layer, or None (off, or the layer has no bias)."""
        q_layer = self.context.q_model.get_submodule(info.name)
        if not corrects_bias(self.context.config.bias_correction, q_layer):
            return None
        return BiasCorrection(q_layer, self.context.process)

    @torch.no_grad()
    def correct_layer_bias(
        self,
        info: LayerInfo,
        fp_block: nn.Module,
        input_quantizer: nn.Module | None,
    ) -> None:
        """After a layer-wise fit: the float layer's output against the rounded layer's.

        The quantized side comes from the cached ``x~`` (behind the layer's input quantizer,
        now attached); the float side is the cached target where no activation was folded
        into it, otherwise the float block is run up to the layer again.
        """
        context, cache = self.context, self.cache
        assert cache.inputs is not None and cache.targets is not None
        assert cache.fp_block_inputs is not None
        q_layer = context.q_model.get_submodule(info.name)
        fp_layer = context.fp_model.get_submodule(info.name)
        activation = context.activation_of(info)
        chunk = context.forward_batch_size

        def float_output(start: int, stop: int) -> torch.Tensor:
            if activation is None:
                return cache.targets[start:stop]
            return capture_output(fp_block, fp_layer, cache.fp_block_inputs[start:stop], chunk)

        def quantized_output(start: int, stop: int) -> torch.Tensor:
            x = cache.inputs[start:stop]
            if input_quantizer is not None:
                x = input_quantizer(x)
            return forward_with_weight(q_layer, x, q_layer.weight)

        rows = len(cache.inputs)
        correct_bias(q_layer, context.process, rows, chunk, float_output, quantized_output)

    def layer_mse(self, info: LayerInfo, quantizer: AdaroundFakeQuantizer) -> dict[str, float]:
        """Output MSE on the cached input and target, round-to-nearest and AdaRound."""
        context, cache = self.context, self.cache
        assert cache.inputs is not None and cache.targets is not None
        q_layer = context.q_model.get_submodule(info.name).eval()
        act_quantizer = self.state.act_quantizers.get(info.name) if context.act_in_loop else None
        # Block fits cache the layer input behind its attached quantizer; layer fits do not.
        layer_wise = context.config.granularity == Granularity.LAYER
        quantize_cached = act_quantizer if layer_wise else None
        weights = {
            "nearest": quantizer.nearest_weight(),
            "adaround": q_layer.weight,
        }
        return output_mse(
            q_layer,
            weights,
            context.activation_of(info),
            cache.inputs,
            cache.targets,
            context.forward_batch_size,
            context.process,
            quantize_cached,
        )

    def finish_layer(
        self,
        info: LayerInfo,
        quantizer: AdaroundFakeQuantizer,
        seconds: float,
        outcome: FitOutcome,
        block: str | None = None,
    ) -> None:
        """Report the layer, check the processes agree, checkpoint it, log it.

        ``outcome`` is the fit the layer was in: its own (layer-wise) or its block's.
        """
        context = self.context
        q_layer = context.q_model.get_submodule(info.name)
        mse = self.layer_mse(info, quantizer)
        check_same_on_all_ranks(quantizer.integer_weight(), info.name, context.process)
        activation = info.activation if context.activation_of(info) is not None else None
        report = layer_report(
            info.name, q_layer, quantizer, mse, activation, seconds, outcome.steps, outcome.curve
        )
        report.steps_run = outcome.steps_run
        report.block = block  # fitted jointly with the other layers of that block, or alone
        self.state.quantizers[info.name] = quantizer
        self.state.reports.append(report)
        if context.checkpoint is not None:
            self.save_checkpoint(info, quantizer, report)
        log_finished_layer(len(self.state.reports), context.plan.total_layers, report)
        self.bar.finish_layer()

    def save_checkpoint(
        self, info: LayerInfo, quantizer: AdaroundFakeQuantizer, report: LayerReport
    ) -> None:
        """Write the finished layer's record and the index (each atomically)."""
        context = self.context
        assert context.checkpoint is not None
        q_layer = context.q_model.get_submodule(info.name)
        act_quantizer = self.state.act_quantizers.get(info.name) if context.act_in_loop else None
        bias = corrected_bias(context.config.bias_correction, q_layer)
        entry = layer_checkpoint(quantizer, report, context.quant.per_channel, bias, act_quantizer)
        self.state.finished[info.name] = entry
        save_layer_progress(
            context.checkpoint,
            context.checkpoint_tag,
            list(self.state.finished),
            info.name,
            entry,
        )

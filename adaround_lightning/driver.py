"""The block-by-block driver: fold BatchNorm, walk the blocks, calibrate every layer.

How it works (see :mod:`adaround_lightning.graph` for how blocks are found):

1. Copy the model, fold BatchNorm into the preceding layers: the float reference ``fp``.
   Copy that again: the network being quantized, ``q``.
2. For each block in execution order, cache the block's input in ``fp`` and in ``q``
   (two forward passes that stop at the block).
3. For each quantizable layer of the block, in execution order: cache its input in ``q`` and its
   float target in ``fp`` by running only the block; initialise an
   :class:`~adaround_lightning.quantizer.AdaroundFakeQuantizer` from its weight; fit a
   :class:`~adaround_lightning.module.LayerReconstruction` with a fresh Lightning ``Trainer``;
   write the hard-rounded weight into ``q``. Later layers therefore see the rounded earlier ones
   (asymmetric reconstruction, paper eq. 25).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from adaround_lightning.activations import (
    ActivationQuantizer,
    attach_input_quantizers,
    observe_inputs,
)
from adaround_lightning.bias_correction import channel_dim, mean_output_error, shift_bias
from adaround_lightning.bn_fold import fold_batch_norms
from adaround_lightning.checkpoint import load_progress, save_layer_progress
from adaround_lightning.config import AdaroundConfig, QuantConfig
from adaround_lightning.datamodule import CalibrationCache, capture_output
from adaround_lightning.distributed import (
    ProcessContext,
    all_reduce_sum,
    check_same_on_all_ranks,
    process_context,
)
from adaround_lightning.errors import UserError
from adaround_lightning.graph import LayerInfo, trace_network
from adaround_lightning.grids import weight_scale
from adaround_lightning.loss import AdaptiveRoundingLoss
from adaround_lightning.module import (
    BlockReconstruction,
    LayerReconstruction,
    forward_with_weight,
    functional_activation,
)
from adaround_lightning.progress import CalibrationProgress
from adaround_lightning.quantizer import AdaroundFakeQuantizer, bits_to_range

__all__ = [
    "AdaroundResult",
    "LayerReport",
    "adaround",
    "calibration_tensor",
    "make_quantizer",
    "quiet_lightning",
]

log = logging.getLogger(__name__)

#: Points kept of each layer's loss curve in the report.
_CURVE_POINTS = 200


@dataclass
class LayerReport:
    """What happened to one layer.

    Attributes:
        name: Module name.
        type: Module class name.
        weight_shape: Shape of the weight.
        bits: Bit width.
        per_channel: Per-channel scales or one per tensor.
        activation: Name of the activation included in the target, if any.
        mse_nearest: Output reconstruction MSE (mean over all elements, whole calibration set) with
            round-to-nearest weights on the same grid.
        mse_adaround: The same with AdaRound's hard-rounded weights.
        flipped_fraction: Fraction of weights rounded differently from nearest.
        seconds: Wall time of this layer: caching, fit and evaluation.
        iters: Optimisation steps.
        loss_curve: ``[step, reconstruction, regularization]`` rows, at most 200.
    """

    name: str
    type: str
    weight_shape: list[int]
    bits: int
    per_channel: bool
    activation: str | None
    mse_nearest: float
    mse_adaround: float
    flipped_fraction: float
    seconds: float
    iters: int
    loss_curve: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


@dataclass
class AdaroundResult:
    """The quantized network and how it was obtained.

    Attributes:
        model: The BN-folded network whose quantized layers hold ``s * q`` (float tensors).
        float_model: The BN-folded float network, on the same device.
        quantizers: Per quantized layer name, its quantizer (scale, learned ``V``, grid).
        layers: Per-layer reports in calibration order.
        skipped: Layers left in float, name -> reason.
        seconds: Wall time of the whole calibration, caching included.
        act_quantizers: Per quantized layer name, the quantizer of its input (empty without
            ``quant.act_bits``); they are attached to ``model``.
    """

    model: nn.Module
    float_model: nn.Module
    quantizers: dict[str, AdaroundFakeQuantizer]
    layers: list[LayerReport]
    skipped: dict[str, str]
    seconds: float
    act_quantizers: dict[str, ActivationQuantizer] = field(default_factory=dict)

    def nearest_model(self) -> nn.Module:
        """A copy of the float network with round-to-nearest weights on the same grids.

        With activation quantization, copies of the same input quantizers are attached.
        """
        nearest = copy.deepcopy(self.float_model)
        with torch.no_grad():
            for name, quantizer in self.quantizers.items():
                layer = nearest.get_submodule(name)
                weight = quantizer.nearest_integer_weight().float() * quantizer.scale
                layer.weight.copy_(weight.to(layer.weight.dtype))
        if self.act_quantizers:
            copies = {n: copy.deepcopy(q) for n, q in self.act_quantizers.items()}
            attach_input_quantizers(nearest, copies)
        return nearest


def make_quantizer(bits: int, per_channel: bool) -> AdaroundFakeQuantizer:
    """A symmetric AdaRound quantizer of ``bits`` bits, per output channel (axis 0) or per tensor.

    Example:
        >>> make_quantizer(4, True).quant_max
        7
    """
    quant_min, quant_max = bits_to_range(bits)
    qscheme = torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric
    return AdaroundFakeQuantizer(
        qscheme=qscheme, quant_min=quant_min, quant_max=quant_max, ch_axis=0
    )


def _first_tensor(item: Any) -> torch.Tensor:
    if isinstance(item, torch.Tensor):
        return item
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        return item[0]
    if isinstance(item, dict):
        for value in item.values():
            if isinstance(value, torch.Tensor):
                return value
    raise TypeError(
        f"cannot find the model input in a calibration item of type {type(item).__name__}; "
        "give tensors, (input, label) pairs or dicts of tensors"
    )


def calibration_tensor(
    data: torch.Tensor | Dataset | DataLoader | Iterable[Any], num_samples: int
) -> torch.Tensor:
    """Stack at most ``num_samples`` model inputs from a tensor, dataset, loader or iterable.

    Labels, if present (``(input, label)`` items), are dropped: calibration is unsupervised.

    Example:
        >>> calibration_tensor(torch.zeros(10, 3, 4, 4), 8).shape
        torch.Size([8, 3, 4, 4])
    """
    if isinstance(data, torch.Tensor):
        return data[:num_samples]
    pieces: list[torch.Tensor] = []
    count = 0
    if isinstance(data, Dataset) and not isinstance(data, Iterable):
        indices = range(min(num_samples, len(data)))  # type: ignore[arg-type]
        iterator: Iterator[Any] = (data[i] for i in indices)
        batched = False
    else:
        iterator = iter(data)
        batched = isinstance(data, DataLoader)
    for item in iterator:
        tensor = _first_tensor(item)
        if not batched:
            tensor = tensor.unsqueeze(0)
        pieces.append(tensor[: num_samples - count])
        count += pieces[-1].shape[0]
        if count >= num_samples:
            break
    if not pieces:
        raise UserError("the calibration set is empty: give at least one sample")
    return torch.cat(pieces)


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


def _inner_trainer(
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
        callbacks=callbacks or [],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=max(1, steps),
        **trainer_kwargs,
    )


@torch.no_grad()
def _output_mse(
    layer: nn.Module,
    weight: torch.Tensor,
    activation: nn.Module | None,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    chunk: int,
    context: ProcessContext,
    input_quantizer: nn.Module | None = None,
) -> float:
    """Mean squared error of ``f_a(weight x)`` against ``targets`` over all cached samples.

    Under DDP each process holds a shard: the sums are added over all processes.
    """
    total = torch.zeros((), dtype=torch.float64, device=inputs.device)
    for start in range(0, inputs.shape[0], chunk):
        x = inputs[start : start + chunk]
        if input_quantizer is not None:
            x = input_quantizer(x)
        out = forward_with_weight(layer, x, weight)
        if activation is not None:
            out = activation(out)
        total += (out.double() - targets[start : start + chunk].double()).pow(2).sum()
    count = torch.tensor(float(targets.numel()), dtype=torch.float64, device=total.device)
    total, count = all_reduce_sum(total, context), all_reduce_sum(count, context)
    return float(total / count)


def _oom_message(where: str, images: torch.Tensor) -> str:
    return (
        f"out of memory while caching the activations of {where} for {images.shape[0]} "
        f"calibration samples: lower adaround.num_samples or adaround.forward_batch_size, "
        "or cache on the CPU with trainer.accelerator=cpu"
    )


def adaround(
    model: nn.Module,
    calibration_data: torch.Tensor | Dataset | DataLoader | Iterable[Any],
    quant: QuantConfig | None = None,
    config: AdaroundConfig | None = None,
    trainer: dict[str, Any] | None = None,
    checkpoint: Path | None = None,
    checkpoint_tag: str = "",
    loggers: list[Logger] | None = None,
    progress: bool | None = None,
) -> AdaroundResult:
    """Quantize ``model``'s Conv/Linear weights with AdaRound, block by block.

    Args:
        model: A trained network (left unchanged; the result holds copies).
        calibration_data: Unlabelled inputs: a tensor ``(N, ...)``, a dataset, a DataLoader or an
            iterable of batches; ``(input, label)`` items are accepted and labels ignored.
        quant: Bits and layer selection (default: 4-bit per-channel everywhere).
        config: AdaRound's optimisation settings (default: the paper's, 10k steps per layer).
        trainer: Keyword arguments of the Lightning ``Trainer`` of each layer's fit, e.g.
            ``{"accelerator": "gpu", "precision": "bf16-mixed"}``. Lightning picks the device.
        checkpoint: A folder that receives a progress checkpoint after every finished layer.
            If it holds one, those layers are restored and calibration continues after them.
        checkpoint_tag: A fingerprint of the settings; a checkpoint with another tag is refused.
        loggers: Lightning loggers shared by every layer's fit (metrics prefixed by layer name).
        progress: Show rich progress bars; None shows them on an interactive terminal outside CI.

    Returns:
        The quantized network, the BN-folded float network, the quantizers and a per-layer report.

    Example:
        >>> import torchvision
        >>> net = torchvision.models.resnet18(num_classes=10).eval()
        >>> images = torch.randn(64, 3, 32, 32)
        >>> result = adaround(net, images, QuantConfig(weight_bits=4),
        ...                   AdaroundConfig(iters=20, batch_size=16), {"accelerator": "cpu"})
        >>> len(result.layers)
        21
    """
    quant = quant or QuantConfig()
    config = config or AdaroundConfig()
    trainer_kwargs = trainer_kwargs_with_defaults(trainer)
    start_time = time.perf_counter()
    context = process_context(trainer_kwargs)
    device = context.device

    images = calibration_tensor(calibration_data, config.num_samples)
    if images.shape[0] < config.batch_size:
        raise UserError(
            f"the calibration set has {images.shape[0]} samples, fewer than one batch "
            f"(adaround.batch_size={config.batch_size}): give more samples or lower the batch size"
        )
    batch_size = config.batch_size
    if context.world_size > 1:
        # adaround.batch_size is the global batch: each process draws its part from its shard.
        if config.batch_size % context.world_size:
            raise UserError(
                f"adaround.batch_size={config.batch_size} is the global batch and must divide "
                f"by the {context.world_size} processes: pick a multiple of {context.world_size}"
            )
        batch_size = config.batch_size // context.world_size
        images = images[context.rank :: context.world_size]
    images = images.to(device)
    if not torch.is_floating_point(images):
        raise UserError(f"calibration inputs must be floating point, got {images.dtype}")
    example = images[:2]

    fp_model = copy.deepcopy(model).eval().to(device)
    for name, parameter in fp_model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise UserError(f"parameter {name!r} contains NaN or Inf: fix the checkpoint first")
    fold_batch_norms(fp_model, example)
    for parameter in fp_model.parameters():
        parameter.requires_grad_(False)
    q_model = copy.deepcopy(fp_model)
    trace = trace_network(fp_model, example)
    if not trace.layers:
        raise UserError("the model has no Conv1d/2d/3d or Linear layer to quantize")

    skipped: dict[str, str] = {}
    for name in trace.unsupported:
        skipped[name] = "unsupported layer type, left in float"
    for name in trace.shared:
        skipped[name] = "called more than once (shared weights), left in float"
    if skipped:
        log.warning("left in float: %s", ", ".join(f"{n} ({r})" for n, r in skipped.items()))
    first, last = trace.layers[0].name, trace.layers[-1].name
    for info in trace.layers:
        if quant.is_excluded(info.name):
            skipped[info.name] = "excluded by quant.exclude"

    total_layers = sum(1 for info in trace.layers if info.name not in skipped)
    cache = CalibrationCache(
        images,
        batch_size=batch_size,
        num_steps=config.iters,
        seed=config.seed + 1_000_003 * context.rank,
        forward_batch_size=config.forward_batch_size,
        steps_per_batch=config.steps_per_batch,
    )
    quantizers: dict[str, AdaroundFakeQuantizer] = {}
    act_quantizers: dict[str, ActivationQuantizer] = {}
    act_in_loop = quant.act_bits is not None and config.act_in_loop
    reports: list[LayerReport] = []
    finished = load_progress(checkpoint, checkpoint_tag) if checkpoint else {}
    for info in trace.layers:  # restore finished layers, in calibration order
        if info.name in finished:
            entry = finished[info.name]
            quantizer = make_quantizer(entry["bits"], entry["per_channel"]).to(device)
            quantizer.load_state_dict(entry["state"])
            quantizer.use_soft_rounding = False
            with torch.no_grad():
                q_layer = q_model.get_submodule(info.name)
                q_layer.weight.copy_(quantizer.hard_weight().to(q_layer.weight.dtype))
                if entry.get("bias") is not None:  # bias_correction
                    q_layer.bias.copy_(entry["bias"].to(q_layer.bias))
            quantizers[info.name] = quantizer
            if entry.get("act_state") is not None:
                act_quantizer = ActivationQuantizer(entry["act_state"]["bits"]).to(device)
                act_quantizer.scale.copy_(entry["act_state"]["scale"])
                act_quantizer.zero_point.copy_(entry["act_state"]["zero_point"])
                act_quantizer.calibrated = True
                act_quantizers[info.name] = act_quantizer
                attach_input_quantizers(q_model, {info.name: act_quantizer})
            reports.append(LayerReport(**entry["report"]))
    if finished:
        log.info("resuming after %d finished layers", len(finished))
    if not context.is_main:  # one process writes and shows progress
        checkpoint, loggers, progress = None, None, False

    def activation_of(info: LayerInfo) -> nn.Module | None:
        if info.activation and config.include_activation:
            return functional_activation(fp_model.get_submodule(info.activation))
        return None

    def new_quantizer(info: LayerInfo) -> tuple[AdaroundFakeQuantizer, int]:
        weight = q_model.get_submodule(info.name).weight
        bits = quant.bits_for(info.name, info.name == first, info.name == last)
        quantizer = make_quantizer(bits, quant.per_channel).to(device)
        quantizer(weight)  # the observer sets the scale, V starts at frac(W/s)
        if quant.scale_method != "maxabs":
            scale = weight_scale(
                weight,
                quantizer.quant_min,
                quantizer.quant_max,
                quant.per_channel,
                quant.scale_method,
            )
            quantizer.update_scale(weight, scale)
        return quantizer, bits

    def new_loss(steps: int) -> AdaptiveRoundingLoss:
        return AdaptiveRoundingLoss(
            max_iter=steps,
            warm_start=config.warm_start,
            beta_range=config.beta_range,
            reg_param=config.reg_param,
            reconstruction=config.reconstruction,  # type: ignore[arg-type]
        )

    def new_act_quantizers(
        names: list[str], network: nn.Module, inputs: torch.Tensor, prefix: str = ""
    ) -> dict[str, ActivationQuantizer]:
        """Input quantizers of ``names`` calibrated by running ``network`` on ``inputs``."""
        assert quant.act_bits is not None
        new = {name: ActivationQuantizer(quant.act_bits).to(device) for name in names}
        observe_inputs(
            network,
            {name[len(prefix) :]: q for name, q in new.items()},
            inputs,
            config.forward_batch_size,
        )
        try:
            for q in new.values():
                q.calibrate(quant.act_observer, context)
        except ValueError as error:
            raise UserError(f"activation calibration of {names[0]!r}: {error}") from None
        return new

    def fit(module: L.LightningModule, name: str, bar: CalibrationProgress, steps: int) -> None:
        bar.start_layer(name, steps)
        cache.num_steps = steps
        with quiet_lightning():
            _inner_trainer(trainer_kwargs, steps, loggers, [bar]).fit(module, datamodule=cache)
        # Lightning's teardown may move the fitted module to the CPU: put it back.
        module.to(device).eval()

    def cache_layer(info: LayerInfo, fp_block: nn.Module, q_block: nn.Module) -> None:
        try:
            cache.cache_layer(
                fp_block,
                q_block,
                fp_model.get_submodule(info.name),
                q_model.get_submodule(info.name),
                activation_of(info),
                len(reports),
            )
        except torch.OutOfMemoryError:
            raise UserError(_oom_message(info.name, images)) from None
        except ValueError as error:
            raise UserError(f"layer {info.name!r}: {error}") from None

    def correct_layer_bias(info: LayerInfo, fp_block: nn.Module, q_block: nn.Module) -> None:
        """Bias correction of a rounded layer: the float block vs the quantized block."""
        assert cache.fp_block_inputs is not None and cache.q_block_inputs is not None
        q_layer = q_model.get_submodule(info.name)
        if getattr(q_layer, "bias", None) is None:
            return
        fp_layer, chunk = fp_model.get_submodule(info.name), config.forward_batch_size
        # Chunk by chunk: the layer's whole output (N, C, H, W) twice would double the cache's
        # peak memory. Sums in float64 over the chunks, then over processes (one shard each).
        error_sum = torch.zeros(q_layer.bias.shape, dtype=torch.float64, device=device)
        count = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, cache.fp_block_inputs.shape[0], chunk):
            fp_output = capture_output(
                fp_block, fp_layer, cache.fp_block_inputs[start : start + chunk], chunk
            )
            q_output = capture_output(
                q_block, q_layer, cache.q_block_inputs[start : start + chunk], chunk
            )
            per_channel = fp_output.numel() / error_sum.numel()
            error_sum += mean_output_error(fp_output, q_output, channel_dim(q_layer)) * per_channel
            count += per_channel
        shift_bias(q_layer, all_reduce_sum(error_sum, context) / all_reduce_sum(count, context))

    def finish_layer(
        info: LayerInfo,
        quantizer: AdaroundFakeQuantizer,
        bits: int,
        seconds: float,
        curve: list[list[float]],
        bar: CalibrationProgress,
    ) -> None:
        """Report the layer (MSEs on its cached input and target), checkpoint it, log it."""
        q_layer = q_model.get_submodule(info.name).eval()
        activation = activation_of(info)
        assert cache.inputs is not None and cache.targets is not None
        act_quantizer = act_quantizers.get(info.name) if act_in_loop else None
        # Block fits cache the layer input behind its attached quantizer; layer fits do not.
        quantize_cached = act_quantizer if config.granularity == "layer" else None
        mse = {
            kind: _output_mse(
                q_layer,
                weight,
                activation,
                cache.inputs,
                cache.targets,
                config.forward_batch_size,
                context,
                quantize_cached,
            )
            for kind, weight in (
                ("nearest", quantizer.nearest_integer_weight().float() * quantizer.scale),
                ("adaround", q_layer.weight),
            )
        }
        check_same_on_all_ranks(quantizer.integer_weight(), info.name, context)
        flipped = quantizer.integer_weight() != quantizer.nearest_integer_weight()
        report = LayerReport(
            name=info.name,
            type=type(q_layer).__name__,
            weight_shape=list(q_layer.weight.shape),
            bits=bits,
            per_channel=quant.per_channel,
            activation=info.activation if activation is not None else None,
            mse_nearest=mse["nearest"],
            mse_adaround=mse["adaround"],
            flipped_fraction=float(flipped.float().mean()),
            seconds=seconds,
            iters=config.iters,
            loss_curve=curve,
        )
        quantizers[info.name] = quantizer
        reports.append(report)
        if checkpoint is not None:
            finished[info.name] = {
                "state": {k: v.detach().cpu() for k, v in quantizer.state_dict().items()},
                "bits": bits,
                "per_channel": quant.per_channel,
                "report": report.to_dict(),
                "bias": q_layer.bias.detach().cpu()
                if config.bias_correction and q_layer.bias is not None
                else None,
                "act_state": None
                if act_quantizer is None
                else {
                    "bits": act_quantizer.bits,
                    "scale": act_quantizer.scale.detach().cpu(),
                    "zero_point": act_quantizer.zero_point.detach().cpu(),
                },
            }
            save_layer_progress(
                checkpoint, checkpoint_tag, list(finished), info.name, finished[info.name]
            )
        log.info(
            "[%d/%d] %s %s W%d: MSE nearest %.3g -> AdaRound %.3g, %.1f%% flipped, %.1fs",
            len(reports),
            total_layers,
            info.name,
            report.type,
            bits,
            mse["nearest"],
            mse["adaround"],
            100 * report.flipped_fraction,
            seconds,
        )
        bar.finish_layer()

    with CalibrationProgress(total_layers, len(quantizers), progress) as bar:
        for block in trace.blocks:
            done = set(skipped) | set(quantizers)
            todo = [info for info in block.layers if info.name not in done]
            if not todo:
                continue
            fp_block, q_block = (
                fp_model.get_submodule(block.name),
                q_model.get_submodule(block.name),
            )
            try:
                cache.cache_block(fp_model, q_model, fp_block, q_block)
            except torch.OutOfMemoryError:
                raise UserError(_oom_message(block.name, images)) from None
            if config.granularity == "block" and block.name not in {i.name for i in block.layers}:
                # One fit for the whole block: its output error, all its layers' V together.
                block_start = time.perf_counter()
                new = {info.name: new_quantizer(info) for info in todo}
                prefix = f"{block.name}."
                steps = config.block_iters or config.iters * len(todo)
                module = BlockReconstruction(
                    q_block,
                    {name[len(prefix) :]: q for name, (q, _) in new.items()},
                    new_loss(steps),
                    config.lr,
                    name=block.name,
                    steps_per_batch=config.steps_per_batch,
                )
                cache.cache_block_output(fp_block, len(reports))
                if act_in_loop:
                    assert cache.q_block_inputs is not None
                    new_act = new_act_quantizers(
                        [info.name for info in todo], q_block, cache.q_block_inputs, prefix
                    )
                    for act_quantizer in new_act.values():
                        act_quantizer.drop_prob = config.drop_prob
                    attach_input_quantizers(q_model, new_act)
                    act_quantizers.update(new_act)
                fit(module, block.name, bar, steps)
                for name in new if act_in_loop else ():
                    act_quantizers[name].drop_prob = 0.0
                curve = module.loss_curve(_CURVE_POINTS)
                seconds = (time.perf_counter() - block_start) / len(todo)
                for info in todo:
                    if config.bias_correction:
                        correct_layer_bias(info, fp_block, q_block)
                    cache_layer(info, fp_block, q_block)
                    quantizer, bits = new[info.name]
                    finish_layer(info, quantizer, bits, seconds, curve, bar)
            else:
                for info in todo:
                    layer_start = time.perf_counter()
                    cache_layer(info, fp_block, q_block)
                    quantizer, bits = new_quantizer(info)
                    act_quantizer = None
                    if act_in_loop:
                        # Calibrated on what the quantized network feeds this layer.
                        assert cache.inputs is not None
                        act_quantizer = new_act_quantizers(
                            [info.name], nn.Identity(), cache.inputs, prefix=info.name
                        )[info.name]
                        act_quantizer.drop_prob = config.drop_prob
                    module = LayerReconstruction(
                        q_model.get_submodule(info.name),
                        quantizer,
                        new_loss(config.iters),
                        activation_of(info),
                        config.lr,
                        name=info.name,
                        steps_per_batch=config.steps_per_batch,
                        input_quantizer=act_quantizer,
                    )
                    fit(module, info.name, bar, config.iters)
                    if act_quantizer is not None:
                        act_quantizer.drop_prob = 0.0
                        act_quantizers[info.name] = act_quantizer
                        attach_input_quantizers(q_model, {info.name: act_quantizer})
                    if config.bias_correction:
                        correct_layer_bias(info, fp_block, q_block)
                    seconds = time.perf_counter() - layer_start
                    finish_layer(
                        info, quantizer, bits, seconds, module.loss_curve(_CURVE_POINTS), bar
                    )
            cache.release()

    if quant.act_bits is not None and not act_in_loop:
        # AIMET's order: weights first, then the activation ranges of the weight-quantized network.
        names = [info.name for info in trace.layers if info.name in quantizers]
        act_quantizers = new_act_quantizers(names, q_model, images)
        attach_input_quantizers(q_model, act_quantizers)

    return AdaroundResult(
        model=q_model,
        float_model=fp_model,
        quantizers=quantizers,
        layers=reports,
        skipped=skipped,
        seconds=time.perf_counter() - start_time,
        act_quantizers=act_quantizers,
    )

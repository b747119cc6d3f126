"""AdaRound on an ONNX model: :func:`adaround_graph`, the orchestrator of the ONNX front end.

As aimet-onnx does it, layer by layer in graph order (paper eq. 25, asymmetric reconstruction):

1. onnxruntime runs the *partly quantized* graph (the layers before rounded, their biases
   corrected) for the layer's input ``x~``, and the *float* graph for its output ``W x`` (one
   session, other feeds: :class:`~.sampler.OnnxSampler`);
2. the layer's PyTorch form (:mod:`~.torch_form`) is checked against onnxruntime on float
   inputs, then the project's own quantizer, loss and Lightning fit learn its ``V``
   (:func:`~adaround_lightning.engine.fit.fit_step.fit_layer`, a fresh Trainer per layer);
3. bias correction, the layer report and a progress checkpoint, as in the PyTorch path.

Block reconstruction needs the graph between layers in PyTorch: this path fits layer-wise and
says so. With ``quant.act_bits``, input grids are calibrated afterwards on the quantized graph
(AIMET's order). A layer whose PyTorch form does not reproduce onnxruntime stays in float and
is listed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaround_lightning.core.distributed import ProcessContext
from adaround_lightning.core.errors import UserError
from adaround_lightning.core.interrupt import STOP, stoppable_walk
from adaround_lightning.engine import layer_steps
from adaround_lightning.engine.adaround_config import AdaroundConfig, Granularity
from adaround_lightning.engine.bit_plan import plan_bits
from adaround_lightning.engine.cache.pairs import LayerPairs
from adaround_lightning.engine.fit.fit_step import FitSettings, fit_layer
from adaround_lightning.engine.fit.trainer import process_context, trainer_kwargs_with_defaults
from adaround_lightning.engine.input_grids import calibrate_input_grids
from adaround_lightning.engine.mixed.choose import footprint, resumable_allocation
from adaround_lightning.engine.progress import CalibrationProgress
from adaround_lightning.engine.records.checkpoint import (
    LayerCheckpoint,
    load_progress,
    save_layer_progress,
)
from adaround_lightning.engine.records.layer_report import layer_report, output_mse
from adaround_lightning.engine.records.results import LayerReport
from adaround_lightning.engine.walk_options import WalkOptions
from adaround_lightning.onnx_frontend.onnx_graph import OnnxGraph, OnnxLayer
from adaround_lightning.onnx_frontend.onnx_loading import load_onnx
from adaround_lightning.onnx_frontend.onnx_mixed import choose_onnx_bits
from adaround_lightning.onnx_frontend.onnx_result import OnnxAdaroundResult
from adaround_lightning.onnx_frontend.onnx_sampler import OnnxSampler
from adaround_lightning.onnx_frontend.torch_form import TorchForm, activation_module, torch_form
from adaround_lightning.quant.activations import ActivationQuantizer
from adaround_lightning.quant.factory import layer_quantizer
from adaround_lightning.quant.quant_config import QuantConfig
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer

__all__ = ["FORM_TOLERANCE", "adaround_graph"]

log = logging.getLogger(__name__)

#: A layer's PyTorch form may differ from onnxruntime by this fraction of the largest output
#: magnitude (float32 kernels that add in another order); more means the form is wrong.
FORM_TOLERANCE = 1e-4

#: Samples on which each layer's PyTorch form is checked against onnxruntime.
_FORM_CHECK_SAMPLES = 32


@dataclass(frozen=True)
class _Walk:
    """The read-only context of one ONNX calibration."""

    quant: QuantConfig
    config: AdaroundConfig
    process: ProcessContext
    images: np.ndarray
    fit: FitSettings
    checkpoint: Path | None
    checkpoint_tag: str


def _check_settings(config: AdaroundConfig, quant: QuantConfig, process: ProcessContext) -> None:
    if process.world_size > 1:
        raise UserError("the ONNX path runs in one process: set trainer.devices=1")
    if quant.act_bits is not None and config.act_in_loop:
        raise UserError(
            "adaround.act_in_loop needs the graph in PyTorch; with model.onnx the input grids "
            "are calibrated after the weights: set adaround.act_in_loop=false"
        )
    if config.fisher:
        raise UserError(
            "adaround.fisher weighs block fits, and model.onnx is fitted layer by layer: "
            "set adaround.fisher=false"
        )
    if config.granularity == Granularity.BLOCK:
        log.warning(
            "model.onnx: every layer is fitted on its own (layer-wise): block reconstruction "
            "needs the graph between layers in PyTorch (adaround.granularity=layer hides this)"
        )
    if config.refine_bits:
        log.warning(
            "model.onnx: no network-level refinement (adaround.refine_bits=%s): it trains "
            "through the whole network in PyTorch; the walk's rounding is kept",
            config.refine_bits,
        )


def _variables(graph: OnnxGraph) -> dict[str, np.ndarray]:
    """The weights and biases of every layer, float, in ONNX layout."""
    names = [layer.weight for layer in graph.layers]
    names += [layer.bias for layer in graph.layers if layer.bias is not None]
    return {name: graph.initializers[name] for name in names}


def _form_error(form: TorchForm, x: np.ndarray, y: np.ndarray) -> float:
    """The largest gap of the PyTorch form to onnxruntime's output ``y`` on ``x``, relative."""
    with torch.no_grad():
        out = form.module(form.prepare(torch.from_numpy(x))).numpy()
    if out.shape != y.shape:
        return float("inf")
    return float(np.abs(out - y).max() / max(1.0, float(np.abs(y).max())))


def _layer_data(
    layer: OnnxLayer,
    form: TorchForm,
    result: OnnxAdaroundResult,
    walk: _Walk,
    sampler: OnnxSampler,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x~`` from the partly quantized graph, ``W x`` from the float graph (prepared, device)."""
    device = walk.process.device
    (x_tilde,) = sampler.run(walk.images, [layer.input], result.values)
    (float_output,) = sampler.run(walk.images, [layer.output], result.float_values)
    inputs = form.prepare(torch.from_numpy(x_tilde)).to(device)
    return inputs, torch.from_numpy(float_output).to(device)


def _fit(
    layer: OnnxLayer,
    form: TorchForm,
    bits: int,
    result: OnnxAdaroundResult,
    walk: _Walk,
    sampler: OnnxSampler,
    bar: CalibrationProgress,
) -> tuple[AdaroundFakeQuantizer, LayerReport]:
    """Learn one layer's rounding; returns its quantizer and report."""
    start, config, quant = time.perf_counter(), walk.config, walk.quant
    inputs, float_output = _layer_data(layer, form, result, walk, sampler)
    module = form.module.to(walk.process.device)
    activation = activation_module(layer.activation, layer.activation_attributes)
    activation = activation if config.include_activation else None
    targets = activation(float_output) if activation is not None else float_output
    quantizer = layer_quantizer(layer.name, module.weight, bits, quant)
    index = len(result.layers)
    pairs = LayerPairs(
        inputs,
        targets,
        config.batch_size,
        config.iters,
        config.seed + index,
        walk.fit.engine.steps_per_batch,
    )
    outcome = fit_layer(module, quantizer, activation, None, pairs, walk.fit, layer.name, bar)
    if layer_steps.corrects_bias(config.bias_correction, module):
        layer_steps.correct_bias(
            module,
            walk.process,
            len(inputs),
            walk.fit.engine.forward_batch_size,
            lambda start, stop: float_output[start:stop],
            lambda start, stop: module(inputs[start:stop]),
        )
    weights = {
        "nearest": quantizer.nearest_weight(),
        "adaround": module.weight,
    }
    mse = output_mse(
        module,
        weights,
        activation,
        inputs,
        targets,
        walk.fit.engine.forward_batch_size,
        walk.process,
    )
    seconds = time.perf_counter() - start
    activation_name = layer.activation if activation is not None else None
    report = layer_report(
        layer.name, module, quantizer, mse, activation_name, seconds, outcome.steps, outcome.curve
    )
    report.steps_run = outcome.steps_run
    return quantizer, report


def _record(
    layer: OnnxLayer,
    form: TorchForm,
    quantizer: AdaroundFakeQuantizer,
    report: LayerReport,
    result: OnnxAdaroundResult,
) -> None:
    """Keep a finished layer: its ``s * q`` and bias in the graph's values, its quantizer."""
    result.values[layer.weight] = form.onnx_weight(quantizer.hard_weight())
    bias = form.onnx_bias()
    if layer.bias is not None and bias is not None:
        result.values[layer.bias] = bias
    result.quantizers[layer.name] = quantizer
    result.forms[layer.name] = form
    result.layers.append(report)


def _save(
    layer: OnnxLayer,
    form: TorchForm,
    quantizer: AdaroundFakeQuantizer,
    report: LayerReport,
    walk: _Walk,
    order: list[str],
) -> None:
    if walk.checkpoint is None:
        return
    bias = layer_steps.corrected_bias(walk.config.bias_correction, form.module)
    entry = layer_steps.layer_checkpoint(quantizer, report, walk.quant.per_channel, bias)
    save_layer_progress(walk.checkpoint, walk.checkpoint_tag, order, layer.name, entry)


def _restore(
    layer: OnnxLayer, form: TorchForm, entry: LayerCheckpoint, result: OnnxAdaroundResult
) -> None:
    """A layer a checkpoint finished: its quantizer, ``s * q`` and corrected bias back."""
    quantizer = layer_steps.restore_layer(form.module, entry, torch.device("cpu"))
    _record(layer, form, quantizer, entry.report, result)


def _calibrate_layer(
    layer: OnnxLayer,
    bits: int,
    result: OnnxAdaroundResult,
    walk: _Walk,
    finished: dict[str, LayerCheckpoint],
    bar: CalibrationProgress,
) -> None:
    """Restore, or check and fit, one layer; log and checkpoint it."""
    sampler = result.sampler.up_to([layer.input, layer.output])  # the nodes up to the layer
    # One float run of a few samples gives the input's shape and checks the PyTorch form.
    float_check = sampler.run(
        walk.images[:_FORM_CHECK_SAMPLES], [layer.input, layer.output], result.float_values
    )
    form = torch_form(layer, result.graph.initializers, list(float_check[0].shape))
    if layer.name in finished:
        _restore(layer, form, finished[layer.name], result)
        return
    error = _form_error(form, *float_check)
    if not error <= FORM_TOLERANCE:
        result.left_in_float[layer.name] = (
            f"its PyTorch form differs from onnxruntime by {error:.3g} of the output range"
        )
        log.warning("%s (%s) left in float: %s", layer.name, layer.op_type, error)
        return
    quantizer, report = _fit(layer, form, bits, result, walk, sampler, bar)
    form.module.cpu()
    quantizer = quantizer.cpu()
    _record(layer, form, quantizer, report, result)
    _save(layer, form, quantizer, report, walk, [r.name for r in result.layers])
    layer_steps.log_finished_layer(len(result.layers), bar.total_layers, report)
    bar.finish_layer()


def calibrate_inputs(
    result: OnnxAdaroundResult, images: np.ndarray, quant: QuantConfig, process: ProcessContext
) -> None:
    """Input grids of every quantized layer, observed on the quantized graph (AIMET's order)."""
    names = list(result.quantizers)
    inputs = [result.layer(name).input for name in names]

    def observe(grids: dict[str, ActivationQuantizer]) -> None:
        for chunk in result.sampler.chunks(images, inputs, result.values):
            for name, values in zip(names, chunk, strict=True):
                grids[name].observe(torch.from_numpy(values))

    cpu = torch.device("cpu")  # onnxruntime's outputs are host arrays
    result.act_quantizers = calibrate_input_grids(names, quant, observe, process, cpu)


def _calibration_array(images: torch.Tensor | np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` images as a contiguous float32 host array (onnxruntime's input)."""
    array = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return np.ascontiguousarray(array[:count], dtype=np.float32)


def _budget_bits(
    graph: OnnxGraph,
    sampler: OnnxSampler,
    array: np.ndarray,
    bits: dict[str, int],
    quant: QuantConfig,
    walk: _Walk,
    result: OnnxAdaroundResult,
) -> dict[str, int]:
    """The bits a budget chooses (or a checkpoint kept for the resumed run), logged."""
    layers = [layer for layer in graph.layers if layer.name in bits]
    allocation = resumable_allocation(
        [layer.name for layer in layers],
        lambda: choose_onnx_bits(graph, sampler, array, layers, quant, result.float_values),
        walk.checkpoint,
        walk.checkpoint_tag,
    )
    result.bit_allocation = allocation
    return dict(allocation.bits)


def _footprint(graph: OnnxGraph, result: OnnxAdaroundResult, quant: QuantConfig) -> dict:
    weights = {name: form.module.weight for name, form in result.forms.items()}
    bits = {name: quantizer.bits for name, quantizer in result.quantizers.items()}
    floats = sum(a.size for a in graph.initializers.values() if a.dtype.kind == "f")
    return footprint(weights, bits, quant, floats - sum(w.numel() for w in weights.values()))


def _warn_left_in_float(left_in_float: dict[str, str]) -> None:
    if left_in_float:
        reasons = "; ".join(f"{name} ({why})" for name, why in left_in_float.items())
        log.warning("%d weighted nodes left in float: %s", len(left_in_float), reasons)


def _walk_layers(
    layers: list[OnnxLayer],
    bits: dict[str, int],
    result: OnnxAdaroundResult,
    walk: _Walk,
    options: WalkOptions,
) -> None:
    # In graph order, after the layers a checkpoint finished; SIGINT / SIGTERM stop in between.
    finished = load_progress(walk.checkpoint, walk.checkpoint_tag) if walk.checkpoint else {}
    if finished:
        log.info("resuming after %d finished layers", len(finished))
    with (
        CalibrationProgress(len(layers), len(finished), options.progress) as bar,
        stoppable_walk(len(layers), lambda: len(result.layers)),
    ):
        for layer in layers:
            STOP.check()
            _calibrate_layer(layer, bits[layer.name], result, walk, finished, bar)


def adaround_graph(
    model: Any,
    images: torch.Tensor | np.ndarray,
    quant: QuantConfig,
    config: AdaroundConfig,
    options: WalkOptions,
) -> OnnxAdaroundResult:
    """The ONNX front end of :func:`~adaround_lightning.api.adaround`: layer by layer.

    ``model`` is a path to an ``.onnx`` file or an ``onnx.ModelProto`` (left unchanged); names
    in ``quant`` are the graph's node names.

    Example:
        >>> from onnx import TensorProto, helper, numpy_helper
        >>> w = numpy_helper.from_array(np.random.randn(3, 4).astype(np.float32), "w")
        >>> graph = helper.make_graph(
        ...     [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)], "g",
        ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [w])
        >>> onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        >>> result = adaround_graph(onnx_model, torch.randn(32, 4), QuantConfig(weight_bits=4),
        ...     AdaroundConfig(iters=8, batch_size=16, granularity="layer"),
        ...     WalkOptions({"accelerator": "cpu"}))
        >>> [report.name for report in result.layers]
        ['fc']
    """
    start = time.perf_counter()
    checkpoint, checkpoint_tag = options.checkpoint, options.checkpoint_tag
    trainer_kwargs = trainer_kwargs_with_defaults(options.trainer)
    process = process_context(trainer_kwargs)
    _check_settings(config, quant, process)
    graph = load_onnx(model)
    array = _calibration_array(images, config.num_samples)
    sampler = OnnxSampler(graph, list(_variables(graph)), options.engine.forward_batch_size)
    result = OnnxAdaroundResult(graph, sampler, _variables(graph), _variables(graph))
    result.left_in_float.update(graph.left_in_float)
    walk = _Walk(
        quant,
        config,
        process,
        array,
        FitSettings(config, trainer_kwargs, options.loggers, process.device, options.engine),
        checkpoint,
        checkpoint_tag,
    )
    bits = plan_bits([layer.name for layer in graph.layers], quant, result.left_in_float)
    if quant.has_budget:  # each layer's bits from its error measured by onnxruntime
        bits = _budget_bits(graph, sampler, array, bits, quant, walk, result)
    _walk_layers(
        [layer for layer in graph.layers if layer.name in bits], bits, result, walk, options
    )
    if quant.act_bits is not None:
        calibrate_inputs(result, array, quant, process)
    _warn_left_in_float(result.left_in_float)
    result.footprint = _footprint(graph, result, quant)
    result.seconds = time.perf_counter() - start
    return result

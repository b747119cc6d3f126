"""Mixed precision on an ONNX graph: each layer's error measured by onnxruntime.

onnxruntime gives no gradients, so the error of layer ``l`` at ``b`` bits is measured rather than
linearised: the graph runs with that layer alone rounded to nearest on its ``b``-bit grid (the
weights are inputs of the sampler's session, so no session is rebuilt), and the network's
output is compared with the float one. The units are those of the PyTorch front end's Fisher
form (:mod:`~adaround_lightning.engine.mixed.sensitivity`): for a classifier (one ``(N, K)``
output) twice the KL divergence of the prediction, which the Fisher form approximates; otherwise
the squared output error; both averaged over the samples. The allocation is shared
(:func:`~adaround_lightning.engine.mixed.choose.allocate_under_budget`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from adaround_lightning.engine.bit_plan import explicit_bits
from adaround_lightning.engine.mixed.choose import BitAllocation, allocate_under_budget
from adaround_lightning.engine.mixed.sensitivity import rounded_weights
from adaround_lightning.onnx_frontend.onnx_graph import OnnxGraph, OnnxLayer
from adaround_lightning.onnx_frontend.onnx_sampler import OnnxSampler
from adaround_lightning.onnx_frontend.torch_form import TorchForm, torch_form
from adaround_lightning.quant.quant_config import QuantConfig

__all__ = ["ONNX_SENSITIVITY_SAMPLES", "choose_onnx_bits", "output_error"]

#: Samples of the measured pass: each layer and candidate is a run of the whole graph, and the
#: error is exact on them (the Fisher pass estimates it with random probes on 256).
ONNX_SENSITIVITY_SAMPLES = 128


def output_error(reference: np.ndarray, output: np.ndarray) -> float:
    """Mean over samples of ``2 KL(p_ref || p)`` (a ``(N, K)`` output) or ``||y - y_ref||^2``.

    Example:
        >>> y = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> output_error(y, y)
        0.0
    """
    reference, output = reference.astype(np.float64), output.astype(np.float64)
    if reference.ndim == 2 and reference.shape[1] > 1:
        log_p = reference - np.logaddexp.reduce(reference, axis=1, keepdims=True)
        log_q = output - np.logaddexp.reduce(output, axis=1, keepdims=True)
        return float(2 * (np.exp(log_p) * (log_p - log_q)).sum(axis=1).mean())
    return float(((output - reference) ** 2).reshape(len(reference), -1).sum(axis=1).mean())


def _torch_weights(
    graph: OnnxGraph,
    layers: Sequence[OnnxLayer],
    sampler: OnnxSampler,
    images: np.ndarray,
    float_values: Mapping[str, np.ndarray],
) -> dict[str, tuple[torch.Tensor, TorchForm]]:
    """Each layer's weight in PyTorch layout, with the form that writes it back."""
    shapes = sampler.run(images[:2], [layer.input for layer in layers], dict(float_values))
    weights = {}
    for layer, value in zip(layers, shapes, strict=True):
        form = torch_form(layer, graph.initializers, list(value.shape))
        weights[layer.name] = (form.module.weight.detach(), form)
    return weights


def _measure(
    sampler: OnnxSampler,
    images: np.ndarray,
    weights: Mapping[str, tuple[torch.Tensor, TorchForm]],
    layers: Sequence[OnnxLayer],
    quant: QuantConfig,
    float_values: Mapping[str, np.ndarray],
) -> dict[str, dict[int, float]]:
    output = sampler.graph.output_name
    (reference,) = sampler.run(images, [output], dict(float_values))
    errors: dict[str, dict[int, float]] = {}
    for layer in layers:
        weight, form = weights[layer.name]
        errors[layer.name] = {}
        for bits, w_b in rounded_weights(weight, quant.candidate_bits, quant).items():
            values = {**float_values, layer.weight: form.onnx_weight(w_b)}
            (moved,) = sampler.run(images, [output], values)
            errors[layer.name][bits] = output_error(reference, moved)
    return errors


def choose_onnx_bits(
    graph: OnnxGraph,
    sampler: OnnxSampler,
    images: np.ndarray,
    layers: Sequence[OnnxLayer],
    quant: QuantConfig,
    float_values: Mapping[str, np.ndarray],
) -> BitAllocation:
    """Each layer's bits under ``quant``'s budget, from errors measured by onnxruntime.

    Args:
        graph: The float graph.
        sampler: Its session, with the layers' weights as inputs.
        images: Calibration inputs; the first :data:`ONNX_SENSITIVITY_SAMPLES` are used.
        layers: The layers to quantize, in graph order.
        quant: The budget and grid settings.
        float_values: The float weights and biases the session is fed (ONNX layouts).
    """
    start = time.perf_counter()
    images = images[:ONNX_SENSITIVITY_SAMPLES]
    weights = _torch_weights(graph, layers, sampler, images, float_values)
    order = [layer.name for layer in graph.layers]
    fixed = {n: b for n, b in explicit_bits(order, quant).items() if n in weights}
    quantized = sum(int(np.prod(graph.initializers[layer.weight].shape)) for layer in layers)
    total = sum(a.size for a in graph.initializers.values() if a.dtype.kind == "f")
    return allocate_under_budget(
        {name: weight for name, (weight, _) in weights.items()},
        fixed,
        quant,
        total - quantized,
        lambda: (_measure(sampler, images, weights, layers, quant, float_values), len(images)),
        start,
    )

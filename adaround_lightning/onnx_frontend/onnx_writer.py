"""Write an ONNX calibration back into the user's graph, and the run dir's other files.

The quantized graph is the input graph with, per quantized layer, its float weight initializer
replaced by an integer one (``INT4`` or ``INT8``, as
:meth:`~adaround_lightning.export.export_config.ExportConfig.int4_weights` says; the graph is
converted to ``export.opset`` when older) behind a ``DequantizeLinear`` whose output keeps the
weight's name (so
every node and tensor name of the input stays), its bias initializer holding the corrected bias,
and with ``quant.act_bits`` a ``[Clip ->] QuantizeLinear -> DequantizeLinear`` on its input.
Encodings are AIMET-ONNX's: keyed by tensor names (weights by initializer, inputs by the tensor
the layer reads). ``onnx_layers.json`` maps each layer to its tensors for the grid check.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from adaround_lightning.core.atomic import atomic_write, atomic_write_text
from adaround_lightning.export.encodings import aimet_encodings
from adaround_lightning.export.export_config import ExportConfig
from adaround_lightning.export.integers import (
    QuantizedLayer,
    quantized_layers,
)
from adaround_lightning.export.onnx import convert_opset, weight_dequantize
from adaround_lightning.export.run_dir import (
    ONNX_FILE,
    ONNX_LAYERS_FILE,
)
from adaround_lightning.quant.activations import ActivationQuantizer

if TYPE_CHECKING:  # the result's methods call this module
    from adaround_lightning.onnx_frontend.onnx_result import OnnxAdaroundResult

__all__ = ["LAYERS_FILE", "onnx_encodings", "write_onnx_model_files", "write_quantized_onnx"]

#: Per layer name: its op, weight, bias and input tensor names in the input graph.
LAYERS_FILE = ONNX_LAYERS_FILE


def _input_qdq(name: str, source: str, quantizer: ActivationQuantizer) -> tuple[list, list, str]:
    """Initializers and nodes of ``[Clip ->] Q -> DQ`` on ``source``; returns its output name."""
    from onnx import helper, numpy_helper

    scale, zero = float(quantizer.scale), int(quantizer.zero_point)
    base = f"{name}.input"
    initializers = [
        numpy_helper.from_array(np.array(scale, np.float32), f"{base}_scale"),
        # int8 with zero point 0 for a symmetric grid (TensorRT's form), else uint8.
        numpy_helper.from_array(
            np.array(zero, np.int8 if quantizer.symmetric else np.uint8), f"{base}_zero_point"
        ),
    ]
    nodes, current = [], source
    if quantizer.bits < 8:  # the b-bit range inside the 8-bit one, as the PyTorch export does
        low = (quantizer.quant_min - zero) * scale
        high = (quantizer.quant_max - zero) * scale
        initializers += [
            numpy_helper.from_array(np.array(low, np.float32), f"{base}_clip_min"),
            numpy_helper.from_array(np.array(high, np.float32), f"{base}_clip_max"),
        ]
        nodes.append(
            helper.make_node(
                "Clip",
                [current, f"{base}_clip_min", f"{base}_clip_max"],
                [f"{base}_clipped"],
                name=f"{base}_clip",
            )
        )
        current = f"{base}_clipped"
    grid = [f"{base}_scale", f"{base}_zero_point"]
    quantized, dequantized = f"{base}_quantized", f"{base}_dequantized"
    for op, source, target, step in (
        ("QuantizeLinear", current, quantized, "quantize"),
        ("DequantizeLinear", quantized, dequantized, "dequantize"),
    ):
        nodes.append(helper.make_node(op, [source, *grid], [target], name=f"{base}_{step}"))
    return initializers, nodes, dequantized


def _replace_initializers(graph: Any, replaced: dict[str, Any], removed: set[str]) -> None:
    kept = [init for init in graph.initializer if init.name not in removed | set(replaced)]
    del graph.initializer[:]
    graph.initializer.extend(kept + list(replaced.values()))


def write_quantized_onnx(
    result: OnnxAdaroundResult,
    path: Path,
    layers: list[QuantizedLayer] | None = None,
    config: ExportConfig | None = None,
) -> None:
    """The input graph with integer weights behind ``DequantizeLinear`` (and input QDQ), checked.

    ``layers``: the result's integers when the caller has them already (else computed here).
    ``config``: the containers and opset (default :class:`ExportConfig`'s); a graph older than
    ``config.opset`` is converted only when a 4-bit container needs it.

    Example:
        >>> # see adaround_onnx's example; then
        >>> # write_quantized_onnx(result, Path("model.onnx"))
    """
    import onnx
    from onnx import numpy_helper

    config = ExportConfig() if config is None else config
    layers = layers if layers is not None else quantized_layers(result.quantizers)
    model = copy.deepcopy(result.graph.model)
    if any(config.int4_weights(x.bits) or x.group_size is not None for x in layers):
        model = convert_opset(model, config.opset)
    graph = model.graph
    replaced, removed, weight_nodes = {}, set(), []
    for quantized in layers:
        layer = result.layer(quantized.name)
        transposed = result.forms[quantized.name].transposed
        int4 = config.int4_weights(quantized.bits)
        initializers, dequantize = weight_dequantize(
            quantized, transposed, layer.weight, int4, zero_point=not int4
        )
        removed.add(layer.weight)
        replaced.update({init.name: init for init in initializers})
        weight_nodes += dequantize
        if layer.bias is not None:
            bias = result.values[layer.bias].astype(np.float32)
            replaced[layer.bias] = numpy_helper.from_array(bias, layer.bias)
    nodes = list(weight_nodes)
    for index, node in enumerate(graph.node):
        for name, quantizer in result.act_quantizers.items():
            layer = result.layer(name)
            if layer.node_index == index:
                initializers, qdq, output = _input_qdq(name, layer.input, quantizer)
                replaced.update({init.name: init for init in initializers})
                nodes += qdq
                node.input[0] = output
        nodes.append(node)
    _replace_initializers(graph, replaced, removed)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def onnx_encodings(result: OnnxAdaroundResult, layers: list[QuantizedLayer]) -> dict[str, Any]:
    """AIMET-ONNX encodings: weights keyed by initializer name, inputs by tensor name.

    Example:
        >>> # onnx_encodings(result, quantized_layers(result.quantizers))["param_encodings"]
    """
    keyed = aimet_encodings(layers, result.act_quantizers)
    params = {
        result.layer(name[: -len(".weight")]).weight: entries
        for name, entries in keyed["param_encodings"].items()
    }
    activations = {
        result.layer(name).input: [entry["input"]["0"]]
        for name, entry in keyed["activation_encodings"].items()
    }
    return {**keyed, "activation_encodings": activations, "param_encodings": params}


def _layer_map(result: OnnxAdaroundResult) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "op_type": result.layer(name).op_type,
            "weight": result.layer(name).weight,
            "bias": result.layer(name).bias,
            "input": result.layer(name).input,
            "transposed": result.forms[name].transposed,
        }
        for name in result.quantizers
    }


def write_onnx_model_files(
    result: OnnxAdaroundResult,
    out_dir: Path,
    layers: list[QuantizedLayer] | None = None,
    config: ExportConfig | None = None,
) -> dict[str, str]:
    """``model.onnx`` and ``onnx_layers.json`` of an ONNX calibration (atomically).

    Returns:
        ``{kind: file name}`` for ``results.json``.
    """
    atomic_write(
        out_dir / ONNX_FILE, lambda tmp: write_quantized_onnx(result, Path(tmp), layers, config)
    )
    atomic_write_text(out_dir / LAYERS_FILE, json.dumps(_layer_map(result), indent=1))
    return {"onnx": ONNX_FILE, "onnx_layers": LAYERS_FILE}

"""A quantized ONNX model: each quantized weight an integer initializer behind DequantizeLinear.

The container follows the bits (:class:`~adaround_lightning.export.export_config.ExportConfig`):
``INT4`` (two integers a byte) for weights of at most 4 bits at opset 21 or newer, else ``INT8``.
Per-axis ``DequantizeLinear`` where scales are per channel; with activation quantization each
quantized layer's input passes a ``QuantizeLinear``/``DequantizeLinear`` pair (uint8 with a zero
point, or int8 with zero point 0 for symmetric grids; behind a ``Clip`` to the b-bit range below 8
bits). Checked with onnxruntime by :func:`onnx_logits`.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adaround_lightning.export.export_config import ExportConfig
from adaround_lightning.export.integers import GridCheckError, QuantizedLayer

__all__ = [
    "TORCHSCRIPT_MAX_OPSET",
    "OnnxWeight",
    "container_dtype",
    "convert_opset",
    "export_float_onnx",
    "export_onnx",
    "graph_opset",
    "onnx_integers",
    "onnx_logits",
    "onnx_weights",
    "weight_dequantize",
]


#: The newest opset the TorchScript exporter writes; newer ones are reached by conversion.
TORCHSCRIPT_MAX_OPSET = 20

#: The deprecation notices of the TorchScript exporter (``torch.onnx.export(dynamo=False)``).
_EXPORTER_NOTICES = (
    "You are using the legacy TorchScript-based ONNX export",
    "The feature will be removed",
)


def _torchscript_export(
    model: nn.Module, example_input: torch.Tensor, buffer: io.BytesIO, opset: int
) -> None:
    torch.onnx.export(
        model,
        (example_input.cpu(),),
        buffer,
        dynamo=False,
        opset_version=min(opset, TORCHSCRIPT_MAX_OPSET),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        do_constant_folding=True,
    )


def export_float_onnx(
    model: nn.Module, example_input: torch.Tensor, path: Path, opset: int = 17
) -> None:
    """The float network as ONNX (input ``input``, output ``logits``, dynamic batch axis).

    What a deployment team would hand over: the input of the ONNX path (``model.onnx=PATH``).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "float.onnx"
        >>> export_float_onnx(nn.Linear(3, 2).eval(), torch.randn(1, 3), path)
        >>> path.is_file()
        True
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        for notice in _EXPORTER_NOTICES:
            warnings.filterwarnings("ignore", message=notice, category=DeprecationWarning)
        _torchscript_export(model.eval().cpu(), example_input, buffer, opset)
    if opset > TORCHSCRIPT_MAX_OPSET:
        import onnx

        converted = convert_opset(onnx.load_from_string(buffer.getvalue()), opset)
        Path(path).write_bytes(converted.SerializeToString())
        return
    Path(path).write_bytes(buffer.getvalue())


def graph_opset(model: object) -> int:
    """The default-domain opset a model imports."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def convert_opset(model: object, opset: int) -> object:
    """``model`` at ``opset`` (ONNX's version converter); unchanged if already there.

    Raises:
        GridCheckError: If the converter cannot take the graph there (name the opset to use).
    """
    from onnx import version_converter

    if graph_opset(model) >= opset:
        return model
    try:
        converted = version_converter.convert_version(model, opset)
        # The converter leaves the shapes it inferred as value_info: optional, and runtimes
        # infer them again; kept out so that the file holds what the source graph held.
        del converted.graph.value_info[:]
        return converted
    except Exception as error:  # the converter raises bare RuntimeErrors and others
        raise GridCheckError(
            f"ONNX export: the graph could not be converted to opset {opset} "
            f"({type(error).__name__}: {str(error).strip().splitlines()[0][:200]}); set "
            f"export.opset={TORCHSCRIPT_MAX_OPSET} export.container=int8"
        ) from None


_Forms = dict[tuple[tuple[int, ...], bytes], list[tuple[QuantizedLayer, bool]]]


def _content(weight: np.ndarray) -> tuple[tuple[int, ...], bytes]:
    return weight.shape, weight.tobytes()


def _weight_forms(layers: list[QuantizedLayer], stand_ins: dict[str, np.ndarray]) -> _Forms:
    """Per float content an exported initializer may have, its layers and whether transposed.

    A Linear applied to an input of 3 or more dimensions (ViT, Swin, ConvNeXt MLPs) is exported
    as ``MatMul`` with ``W^T`` constant-folded into an initializer: that form is matched too.
    A layer exported with a stand-in (:func:`_distinct_weights`) is found by the stand-in.
    """
    forms: _Forms = {}
    for layer in layers:
        weight = stand_ins.get(layer.name)
        weight = layer.dequantized().numpy() if weight is None else weight
        forms.setdefault(_content(weight), []).append((layer, False))
        if weight.ndim == 2:
            transposed = np.ascontiguousarray(weight.T)
            forms.setdefault(_content(transposed), []).append((layer, True))
    return forms


@contextlib.contextmanager
def _distinct_weights(model: nn.Module, layers: list[QuantizedLayer]) -> Iterator[dict]:
    """Give layers whose ``s * q`` another layer shares a distinct stand-in while exporting.

    The exporter keeps one initializer per content (timm zero-initialises the last norm of each
    residual block, so its folded convolutions are all zero): a stand-in per such layer keeps
    one initializer each, found by the stand-in and replaced by that layer's own integers.
    """
    groups: dict[tuple[tuple[int, ...], bytes], list[QuantizedLayer]] = {}
    for layer in layers:
        groups.setdefault(_content(layer.dequantized().numpy()), []).append(layer)
    shared = [layer for group in groups.values() if len(group) > 1 for layer in group]
    saved, stand_ins = {}, {}
    for index, layer in enumerate(shared):
        weight = model.get_submodule(layer.name).weight
        count = weight.numel()
        # Values in (index + 1, index + 2]: distinct between layers, and from real weights.
        values = (torch.arange(1, count + 1, dtype=torch.float64) / count + index + 1).float()
        saved[layer.name] = weight.detach().clone()
        weight.data.copy_(values.reshape(weight.shape))
        stand_ins[layer.name] = values.reshape(weight.shape).numpy()
    try:
        yield stand_ins
    finally:
        for name, weight in saved.items():
            model.get_submodule(name).weight.data.copy_(weight)


def _match(forms: _Forms, init: object, replaced: set[str]) -> tuple[QuantizedLayer, bool] | None:
    """The layer whose ``s * q`` this initializer holds: by content, its name breaking ties."""
    from onnx import numpy_helper

    array = numpy_helper.to_array(init)
    if array.dtype != np.float32:
        return None
    free = [c for c in forms.get((array.shape, array.tobytes()), []) if c[0].name not in replaced]
    named = [c for c in free if f"{c[0].name}.weight" == init.name]
    return (named or free or [None])[0]


def container_dtype(layer: QuantizedLayer, int4: bool) -> np.dtype:
    """The numpy type of ``layer``'s integer initializer: (u)int4 (``ml_dtypes``) or (u)int8."""
    signed = layer.quant_min < 0
    if int4:
        import ml_dtypes

        return np.dtype(ml_dtypes.int4 if signed else ml_dtypes.uint4)
    return np.dtype(np.int8 if signed else np.uint8)


def _stored_layout(layer: QuantizedLayer, transposed: bool) -> tuple:
    """``(q, scale, axis, block attributes, shape to reshape to)`` as ``model.onnx`` stores them.

    Per channel: ``axis = ch_axis``. Group-wise: blocks of ``G`` along the input axis (1), a
    weight of more than two dimensions flattened to ``(C_out, K)`` (reshaped back after). A
    transposed weight (``W^T``, ``(in, out)``) swaps the axes.
    """
    q, axis = layer.q.numpy(), layer.ch_axis
    scale = layer.scale.numpy().astype(np.float32)
    blocks, shape = {}, None
    if layer.group_size is not None:
        axis, blocks = 1, {"block_size": layer.group_size}
        if q.ndim > 2:
            shape, q = q.shape, q.reshape(q.shape[0], -1)
    if transposed:
        q = np.ascontiguousarray(q.T)
        axis = None if axis is None else 1 - axis
        scale = np.ascontiguousarray(scale.T) if blocks else scale
    return q, scale, axis, blocks, shape


def weight_dequantize(
    layer: QuantizedLayer,
    transposed: bool,
    output: str,
    int4: bool = False,
    zero_point: bool = True,
) -> tuple[list, list]:
    """The integer initializers of ``layer`` and the nodes that give ``output``.

    The nodes are a ``DequantizeLinear``, and for a group-wise grid on a weight of more than
    two dimensions a ``Reshape`` after it: groups run along ``flatten(1)`` of the weight, and
    ONNX's block-wise ``DequantizeLinear`` (``block_size``, opset 21) along one axis, so the
    integers are stored as ``(C_out, K)`` and reshaped.

    ``transposed``: the graph reads ``W^T``, shape ``(in, out)``, so the integers are
    transposed and per-channel scales run along axis 1. ``int4``: an ``INT4`` (or ``UINT4``)
    container, packed two integers a byte (opset 21 or newer); else ``INT8`` (``UINT8``).
    ``zero_point``: store the (all-zero) zero points; ONNX's default for an absent one is 0
    of the container's type, so a 4-bit container leaves it out (one byte less per channel).
    """
    from onnx import helper, numpy_helper

    base = f"{layer.name}.weight"
    q, scale, axis, blocks, shape = _stored_layout(layer, transposed)
    dtype = container_dtype(layer, int4)
    initializers = [
        numpy_helper.from_array(q.astype(dtype), f"{base}_quantized"),
        numpy_helper.from_array(scale, f"{base}_scale"),
    ]
    inputs = [f"{base}_quantized", f"{base}_scale"]
    if zero_point:
        initializers.append(
            numpy_helper.from_array(np.zeros(scale.shape, dtype=dtype), f"{base}_zero_point")
        )
        inputs.append(f"{base}_zero_point")
    dequantized = output if shape is None else f"{base}_grouped"
    nodes = [
        helper.make_node(
            "DequantizeLinear",
            inputs,
            [dequantized],
            name=f"{base}_dequantize",
            **({"axis": axis} if axis is not None else {}),
            **blocks,
        )
    ]
    if shape is not None:  # (C_out, K) back to the weight's shape
        initializers.append(numpy_helper.from_array(np.array(shape, np.int64), f"{base}_shape"))
        reshape = [dequantized, f"{base}_shape"]
        nodes.append(helper.make_node("Reshape", reshape, [output], name=f"{base}_reshape"))
    return initializers, nodes


def _replace_weights(
    graph: Any, layers: list[QuantizedLayer], stand_ins: dict, config: ExportConfig
) -> None:
    """Replace every quantized weight initializer of ``graph`` by ``DequantizeLinear(q)``."""
    forms = _weight_forms(layers, stand_ins)
    replaced: set[str] = set()
    kept, nodes = [], []
    for init in graph.initializer:
        found = _match(forms, init, replaced)
        if found is None:
            kept.append(init)
            continue
        replaced.add(found[0].name)
        int4 = config.int4_weights(found[0].bits)
        initializers, weight_nodes = weight_dequantize(
            found[0], found[1], init.name, int4, zero_point=not int4
        )
        kept += initializers
        nodes += weight_nodes
    missing = sorted({layer.name for layer in layers} - replaced)
    if missing:
        raise GridCheckError(
            f"ONNX export: no initializer equals s * q for {missing[:3]}; the model's weights "
            "are not the quantized ones"
        )
    del graph.initializer[:]
    graph.initializer.extend(kept)
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + existing)


def export_onnx(
    model: nn.Module,
    layers: list[QuantizedLayer],
    example_input: torch.Tensor,
    path: Path,
    config: ExportConfig | None = None,
) -> None:
    """Export ``model`` to ONNX with each quantized weight as ``DequantizeLinear(q)``.

    The float weights of ``model`` must be exactly ``s * q``. The exported graph is located by
    weight content, so whatever names the exporter gives initializers, every quantized weight is
    replaced: an integer initializer ``NAME.weight_quantized`` (``INT4`` or ``INT8``, see
    :meth:`ExportConfig.int4_weights`), its scale and zero point, and a ``DequantizeLinear``
    (``axis = ch_axis`` when per channel) whose output feeds the consumers. A Linear weight that
    the exporter folded into ``W^T`` (a ``MatMul`` on 3-D inputs) is stored transposed,
    ``(in, out)``, with ``axis = 1``.

    Example:
        >>> # export_onnx(result.model, quantized_layers(result.quantizers), images[:1],
        >>> #             Path("model.onnx"), ExportConfig(opset=21))
    """
    import onnx

    config = ExportConfig() if config is None else config
    opset = config.opset

    model = model.eval().cpu()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), _distinct_weights(model, layers) as stand_ins:
        # The TorchScript exporter is deprecated upstream. Tried against the dynamo exporter
        # (torch.export + onnxscript) on this project's CPU: both keep every Conv/Linear weight
        # as an initializer named after its parameter, but dynamo took 27.7 s for ResNet18
        # against 2.4 s and needs onnxscript and onnx-ir (README, "ONNX exporter"). Only the
        # exporter's own two deprecation notices are hidden; every other warning gets through.
        for notice in _EXPORTER_NOTICES:
            warnings.filterwarnings("ignore", message=notice, category=DeprecationWarning)
        _torchscript_export(model, example_input, buffer, opset)
    graph_model = onnx.load_from_string(buffer.getvalue())
    if opset > TORCHSCRIPT_MAX_OPSET:
        graph_model = convert_opset(graph_model, opset)
    _replace_weights(graph_model.graph, layers, stand_ins, config)
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(path))


def onnx_session(model: Path | bytes) -> Any:
    """A CPU onnxruntime session that runs ``model`` as written (no graph optimizations).

    onnxruntime's optimizations change a quantized graph's numerics: the extended ones fuse
    ``DequantizeLinear`` + ``MatMul`` into integer kernels (1.8e-4 on logits of 0.35 in
    tests/export), and even the basic ones drop a ``Clip`` before a ``QuantizeLinear`` (a ReLU6,
    or the b-bit range of a grid below 8 bits), which on the quickstart at A4 changed the
    predicted class of 37 % of the images against 0 % with none. The parity figures measure the
    file, so they run it unoptimized (no slower here: the quickstart's 1000 images in 0.84 s
    against 0.90 s).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def onnx_logits(path: Path, inputs: torch.Tensor) -> np.ndarray:
    """Run ``model.onnx`` with onnxruntime on the CPU, as written (see :func:`onnx_session`)."""
    return onnx_session(path).run(["logits"], {"input": inputs.cpu().numpy()})[0]


@dataclass(frozen=True)
class OnnxWeight:
    """One integer weight of ``model.onnx`` as its ``DequantizeLinear`` reads it.

    Attributes:
        q: The integer initializer, widened to int8 (or uint8) whatever its container.
        container: Its ONNX element type: ``INT4``, ``UINT4``, ``INT8`` or ``UINT8``.
        scale: Its scale initializer (float32, ``(C,)`` or a scalar).
        zero_point: Its zero-point initializer.
        axis: The node's ``axis`` attribute (ONNX's default, 1, when absent).
        block_size: Its ``block_size`` attribute (0, ONNX's default: per axis or tensor).
    """

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int
    container: str = "INT8"
    block_size: int = 0


def onnx_weights(path: Path) -> dict[str, OnnxWeight]:
    """Per layer name, what each weight ``DequantizeLinear`` of ``model.onnx`` reads.

    Read from the graph itself: the node's inputs name the integer, scale and zero-point
    initializers, and its ``axis`` attribute is taken as ONNX defines it (default 1).
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    types = {
        init.name: onnx.TensorProto.DataType.Name(init.data_type) for init in graph.initializer
    }
    weights = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not node.input[0].endswith(".weight_quantized"):
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        block_size = next((a.i for a in node.attribute if a.name == "block_size"), 0)
        q, scale = (arrays.get(name) for name in node.input[:2])
        if q is None or scale is None:
            continue  # an input computed in the graph: not one of our integer weights
        container = types[node.input[0]]
        wide = np.int8 if container in ("INT4", "INT8") else np.uint8
        # An absent zero point is ONNX's default: 0 of the container's type.
        absent = len(node.input) < 3 or not node.input[2]
        zero = np.zeros(scale.shape, wide) if absent else arrays.get(node.input[2])
        if zero is None:
            continue
        weights[node.input[0][: -len(".weight_quantized")]] = OnnxWeight(
            q.astype(wide), scale, zero.astype(wide), axis, container, block_size
        )
    return weights


def onnx_integers(path: Path) -> dict[str, np.ndarray]:
    """Per layer name, the integer weight initializer of ``model.onnx`` (as int8 or uint8)."""
    return {name: weight.q for name, weight in onnx_weights(path).items()}

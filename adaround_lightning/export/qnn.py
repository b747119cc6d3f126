"""QNN / AIMET-ONNX files (``export.target=qnn``): a float graph and encodings keyed by its tensors.

Qualcomm's converter (``qnn-onnx-converter --input_network model_qnn.onnx
--quantization_overrides model_qnn.encodings``) and aimet-onnx (``load_encodings_to_sim``) read a
float ONNX graph plus an encodings file keyed by that graph's tensor names, the form AIMET's own
``QuantizationSimModel.export`` writes. Both are derived from ``model.onnx`` by one graph rewrite,
the same for every front end:

* each weight ``DequantizeLinear(q, s[, z])`` becomes a float initializer ``s * (q - z)`` under
  the ``DequantizeLinear``'s output name (the name the weight has in ``model.onnx``), with a
  parameter encoding of the layer's bits, per channel or per tensor;
* each activation ``[Clip ->] QuantizeLinear -> DequantizeLinear`` becomes an ``Identity`` that
  writes the same tensor (the quantized layer's input in ``model.onnx``), and that tensor gets
  the activation encoding: QNN and AIMET quantize a tensor for all its readers, so the encoding
  cannot go on a source that a residual branch also reads in float.

Encodings are written in AIMET's format ``1.0.0``: lists of ``{name, dtype: "INT", enc_type,
bw, is_sym, scale: [...], offset: [...]}``, with ``offset = q_min - z`` (``-2**(b-1)`` for a
signed symmetric grid, ``-z`` for an unsigned one), as AIMET defines it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adaround_lightning.core.atomic import atomic_write, atomic_write_text
from adaround_lightning.export.integers import QuantizedLayer

__all__ = [
    "QNN_ENCODINGS_FILE",
    "QNN_ONNX_FILE",
    "TensorEncoding",
    "check_qnn_files",
    "qnn_encodings",
    "qnn_graph",
    "write_qnn_files",
]

#: The float graph the encodings refer to.
QNN_ONNX_FILE = "model_qnn.onnx"
#: AIMET 1.0.0 encodings keyed by tensor names of ``model_qnn.onnx`` (and of ``model.onnx``).
QNN_ENCODINGS_FILE = "model_qnn.encodings"
_WEIGHT_SUFFIX = ".weight_quantized"


@dataclass
class TensorEncoding:
    """One tensor's integer grid: ``x = scale * (q_unsigned + offset)``.

    Attributes:
        name: The ONNX tensor name.
        bits: Bit width.
        scale: One per channel (``(C,)``) or a scalar (``()``), float32.
        offset: AIMET's offset, ``q_min - z``, shaped as ``scale``.
        symmetric: A signed grid with zero point 0.
        block_size: Group-wise grid: ``scale`` is ``(C_out, C_in / block_size)`` (0: none).
    """

    name: str
    bits: int
    scale: np.ndarray
    offset: np.ndarray
    symmetric: bool
    block_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The AIMET ``1.0.0`` entry."""
        kind = (
            "PER_BLOCK" if self.block_size else "PER_CHANNEL" if self.scale.ndim else "PER_TENSOR"
        )
        entry = {
            "name": self.name,
            "dtype": "INT",
            "enc_type": kind,
            "bw": self.bits,
            "is_sym": self.symmetric,
            "scale": [float(s) for s in self.scale.reshape(-1)],
            "offset": [int(o) for o in self.offset.reshape(-1)],
        }
        if self.block_size:
            entry["block_size"] = self.block_size
        return entry


def _constants(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _dequantized(
    q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int, block_size: int = 0
) -> np.ndarray:
    """``s * (q - z)`` in float32, ``s`` and ``z`` broadcast along ``axis``.

    Per channel they broadcast; block-wise they repeat ``block_size`` times along ``axis``.
    """
    if block_size:
        scale = np.repeat(scale, block_size, axis=axis)
        zero = np.repeat(zero, block_size, axis=axis)
        return ((q.astype(np.int32) - zero.astype(np.int32)).astype(np.float32) * scale).astype(
            np.float32
        )
    shape = [1] * q.ndim
    if scale.ndim:
        shape[axis] = scale.size
    diff = q.astype(np.int32) - zero.astype(np.int32).reshape(shape)
    return (diff.astype(np.float32) * scale.astype(np.float32).reshape(shape)).astype(np.float32)


def _weight_encodings(graph: Any, values: dict, layers: dict[str, QuantizedLayer], drop: set):
    """Float initializers and encodings for every weight ``DequantizeLinear``."""
    from onnx import numpy_helper

    initializers, encodings = [], []
    for index, node in enumerate(graph.node):
        if node.op_type != "DequantizeLinear" or not node.input[0].endswith(_WEIGHT_SUFFIX):
            continue
        layer = layers.get(node.input[0][: -len(_WEIGHT_SUFFIX)])
        q, scale = values.get(node.input[0]), values.get(node.input[1])
        if layer is None or q is None or scale is None:
            continue
        absent = len(node.input) < 3 or not node.input[2]  # ONNX's default zero point: 0
        zero = np.zeros(scale.shape, np.int64) if absent else values[node.input[2]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % max(q.ndim, 1)
        block = next((a.i for a in node.attribute if a.name == "block_size"), 0)
        weight = _dequantized(q, scale, zero, axis, block)
        initializers.append(numpy_helper.from_array(weight, node.output[0]))
        offset = np.full(scale.shape, layer.quant_min, dtype=np.int64) - zero.astype(np.int64)
        encodings.append(
            TensorEncoding(
                node.output[0], layer.bits, scale, offset.reshape(scale.shape), True, block
            )
        )
        drop.add(index)
    return initializers, encodings


def _is_grid_clip(node: Any, values: dict, scale: np.ndarray, offset: np.ndarray, bits: int):
    """Whether ``node`` is the b-bit range's ``Clip`` written before a ``QuantizeLinear``.

    Only that one is removed (the encoding's clamp replaces it); a ``Clip`` of the network
    (ReLU6 exports as ``Clip(0, 6)``) stays, whatever its bounds.
    """
    if node.op_type != "Clip" or bits >= 8 or len(node.input) < 3:
        return False
    low, high = values.get(node.input[1]), values.get(node.input[2])
    if low is None or high is None:
        return False
    step = float(scale)
    expected = (float(offset) * step, (float(offset) + 2**bits - 1) * step)
    return bool(np.allclose([float(low), float(high)], expected, rtol=1e-6, atol=1e-12))


def _activation_encodings(graph: Any, values: dict, act_bits: int | None, drop: set):
    """Each ``[Clip ->] Q -> DQ`` becomes ``Identity``; returns the new nodes and encodings.

    The ``Identity`` writes the tensor the ``DequantizeLinear`` wrote, the input of the
    quantized layer alone: QNN and AIMET quantize a tensor for every consumer, and the
    simulation quantizes the layer's input only (a residual branch reading the same source
    stays float), so the encoding goes on that tensor and not on its source.
    """
    from onnx import helper

    # Nodes by index: protobuf gives a new Python object per access, so ids are not stable.
    producers = {out: i for i, node in enumerate(graph.node) for out in node.output}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    identities, encodings = {}, []
    for index, node in enumerate(graph.node):
        if node.op_type != "QuantizeLinear" or act_bits is None:
            continue
        after = consumers.get(node.output[0], [])
        if len(after) != 1 or graph.node[after[0]].op_type != "DequantizeLinear":
            continue
        dequantize = graph.node[after[0]]
        scale, zero = values[node.input[1]], values[node.input[2]]
        symmetric = zero.dtype == np.int8
        quant_min = -(2 ** (act_bits - 1)) if symmetric else 0
        offset = np.array(quant_min - int(zero), dtype=np.int64)
        source, clip = node.input[0], producers.get(node.input[0])
        grid_clip = clip is not None and _is_grid_clip(
            graph.node[clip], values, scale, offset, act_bits
        )
        if grid_clip and len(consumers[source]) == 1:  # the encoding's clamp replaces it
            source = graph.node[clip].input[0]
            drop.add(clip)
        tensor = dequantize.output[0]
        identities[after[0]] = helper.make_node(
            "Identity", [source], [tensor], name=f"{dequantize.name or tensor}_identity"
        )
        encodings.append(TensorEncoding(tensor, act_bits, scale, offset, symmetric))
        drop.add(index)
    return identities, encodings


def qnn_graph(
    model: Any, layers: list[QuantizedLayer], act_bits: int | None
) -> tuple[Any, list[TensorEncoding], list[TensorEncoding]]:
    """The float graph of ``model`` (``model.onnx``) and the encodings of its tensors.

    Args:
        model: The ``onnx.ModelProto`` of ``model.onnx`` (left unchanged).
        layers: The run's quantized layers (their bits and ``q_min``).
        act_bits: ``quant.act_bits`` (None: weights only).

    Returns:
        ``(float model, parameter encodings, activation encodings)``.

    Example:
        >>> # graph, params, acts = qnn_graph(onnx.load("model.onnx"), layers, 8)
    """
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    values, drop = _constants(graph), set()
    floats, params = _weight_encodings(graph, values, {x.name: x for x in layers}, drop)
    identities, activations = _activation_encodings(graph, values, act_bits, drop)
    kept = [identities.get(i, node) for i, node in enumerate(graph.node) if i not in drop]
    # Constants that fed only the removed Q/DQ nodes go too.
    read = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    kept = [n for n in kept if n.op_type != "Constant" or any(o in read for o in n.output)]
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in kept for name in node.input}
    initializers = [init for init in graph.initializer if init.name in used] + floats
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    onnx.checker.check_model(model)
    return model, params, activations


def qnn_encodings(
    params: list[TensorEncoding], activations: list[TensorEncoding]
) -> dict[str, Any]:
    """AIMET's ``1.0.0`` encodings document (what ``load_encodings_to_sim`` reads)."""
    return {
        "version": "1.0.0",
        "activation_encodings": [a.to_dict() for a in activations],
        "param_encodings": [p.to_dict() for p in params],
        "excluded_layers": [],
        "quantizer_args": {
            "activation_bitwidth": activations[0].bits if activations else 32,
            "dtype": "int",
            "is_symmetric": True,
            "param_bitwidth": max((p.bits for p in params), default=8),
            "per_channel_quantization": any(p.scale.ndim for p in params),
            "quant_scheme": "post_training_tf",
        },
    }


def write_qnn_files(
    onnx_path: Path, out_dir: Path, layers: list[QuantizedLayer], act_bits: int | None
) -> dict[str, str]:
    """Write ``model_qnn.onnx`` and ``model_qnn.encodings`` from ``onnx_path``, atomically.

    Returns:
        ``{"qnn_onnx": ..., "qnn_encodings": ...}`` for ``results.json``'s ``outputs``.
    """
    import onnx

    model, params, activations = qnn_graph(onnx.load(str(onnx_path)), layers, act_bits)
    atomic_write(out_dir / QNN_ONNX_FILE, lambda tmp: onnx.save(model, str(tmp)))
    document = qnn_encodings(params, activations)
    atomic_write_text(out_dir / QNN_ENCODINGS_FILE, json.dumps(document, indent=1))
    return {"qnn_onnx": QNN_ONNX_FILE, "qnn_encodings": QNN_ENCODINGS_FILE}


def _tensor_names(graph: Any) -> set[str]:
    names = {init.name for init in graph.initializer} | {i.name for i in graph.input}
    for node in graph.node:
        names.update(node.output)
    return names


def check_qnn_files(run_dir: Path, layers: list[QuantizedLayer]) -> int:
    """Check ``model_qnn.*`` against the run's integers; returns the weights checked.

    Every encoding names a tensor of ``model.onnx``; every weight of ``model_qnn.onnx`` is
    ``s * q`` for the layer's own scale and integers (``round(W / s)`` in float64), with its
    bits and ``offset = q_min``.

    Raises:
        GridCheckError: Naming the first tensor that disagrees.
    """
    import onnx
    from onnx import numpy_helper

    from adaround_lightning.export.integers import GridCheckError

    document = json.loads((run_dir / QNN_ENCODINGS_FILE).read_text())
    graph = onnx.load(str(run_dir / "model.onnx")).graph
    entries = document["param_encodings"] + document["activation_encodings"]
    unknown = sorted({e["name"] for e in entries} - _tensor_names(graph))
    if unknown:
        raise GridCheckError(f"{QNN_ENCODINGS_FILE}: {unknown[:3]} are not tensors of model.onnx")
    layer_of = {
        node.output[0]: node.input[0][: -len(_WEIGHT_SUFFIX)]
        for node in graph.node
        if node.op_type == "DequantizeLinear" and node.input[0].endswith(_WEIGHT_SUFFIX)
    }
    by_name = {layer.name: layer for layer in layers}
    qnn_graph_ = onnx.load(str(run_dir / QNN_ONNX_FILE)).graph
    floats = {init.name: numpy_helper.to_array(init) for init in qnn_graph_.initializer}
    for entry in document["param_encodings"]:
        layer = by_name.get(layer_of.get(entry["name"], ""))
        weight = floats.get(entry["name"])
        if layer is None or weight is None:
            raise GridCheckError(f"{QNN_ENCODINGS_FILE}: {entry['name']} is no quantized weight")
        scale = np.asarray(entry["scale"], np.float64)
        q = layer.q.numpy()
        if q.ndim == 2 and weight.shape == q.T.shape and weight.shape != q.shape:
            weight = weight.T  # a MatMul's W^T, (in, out)
        elif weight.shape != q.shape and weight.size == q.size:  # grouped: (C_out, K)
            weight = weight.reshape(q.shape)
        grid = layer.broadcast_scale().double().numpy()  # the layer's own scale, on q's shape
        same = (
            entry["bw"] == layer.bits
            and set(entry["offset"]) == {layer.quant_min}
            and entry.get("block_size", 0) == (layer.group_size or 0)
            and np.array_equal(scale, layer.scale.reshape(-1).double().numpy())
            and weight.shape == q.shape
            and np.array_equal(np.rint(weight.astype(np.float64) / grid), q)
        )
        if not same:
            raise GridCheckError(f"{layer.name}: {QNN_ONNX_FILE} or its encoding differs")
    return len(document["param_encodings"])

"""The quantizable layers of a float ONNX graph: ``Conv``, ``Gemm`` and ``MatMul`` with a weight.

A layer is one node whose weight is a float initializer read by that node alone. What directly
follows it (one consumer, an element-wise activation) is folded into its reconstruction target,
as the PyTorch path does. Everything else with a weight is listed with the reason it stays float.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ACTIVATION_OPS", "OnnxGraph", "OnnxLayer", "find_layers"]

#: Element-wise ops folded into the target of the layer they directly follow.
ACTIVATION_OPS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Gelu")

#: Ops whose weight can be quantized here.
LAYER_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class OnnxLayer:
    """One quantizable node.

    Attributes:
        name: A unique name: the node's name, else ``OP_INDEX``.
        op_type: ``Conv``, ``Gemm`` or ``MatMul``.
        node_index: Its position in ``graph.node`` (topological order).
        input: The activation tensor it reads.
        output: The tensor it writes (before any activation).
        weight: The weight initializer's name.
        bias: The bias initializer's name, or None (Gemm's ``C``, Conv's ``B``).
        attributes: The node's attributes (ints, floats, strings, int lists).
        activation: The op that directly follows (:data:`ACTIVATION_OPS`), or None.
        activation_attributes: Its attributes, and Clip's ``min``/``max`` as floats.
        activation_output: The activation's output tensor, or None.
    """

    name: str
    op_type: str
    node_index: int
    input: str
    output: str
    weight: str
    bias: str | None
    attributes: dict[str, Any]
    activation: str | None = None
    activation_attributes: dict[str, Any] = field(default_factory=dict)
    activation_output: str | None = None


@dataclass
class OnnxGraph:
    """A loaded float ONNX model and what :func:`find_layers` read from it.

    Attributes:
        model: The ``onnx.ModelProto`` (not modified).
        initializers: Per initializer name, its array.
        input_name: The graph's one data input.
        output_name: Its first output (the logits).
        layers: The quantizable layers, in graph order.
        left_in_float: Per weighted node (or weight) left in float, why.
    """

    model: Any
    initializers: dict[str, np.ndarray]
    input_name: str
    output_name: str
    layers: list[OnnxLayer] = field(default_factory=list)
    left_in_float: dict[str, str] = field(default_factory=dict)


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constant_values(graph: Any, initializers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Initializers plus the outputs of ``Constant`` nodes (Clip's bounds, from torch)."""
    from onnx import numpy_helper

    values = dict(initializers)
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1:
            attribute = node.attribute[0]
            if attribute.name == "value":
                values[node.output[0]] = numpy_helper.to_array(attribute.t)
    return values


def _clip_bounds(node: Any, constants: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """Clip's ``min``/``max`` as floats (attributes before opset 11, inputs since), or None."""
    attributes = _attributes(node)
    bounds = {"min": attributes.get("min", -np.inf), "max": attributes.get("max", np.inf)}
    for key, index in (("min", 1), ("max", 2)):
        if len(node.input) > index and node.input[index]:
            if node.input[index] not in constants:
                return None  # a bound computed in the graph
            bounds[key] = float(constants[node.input[index]].reshape(()))
    return {key: float(value) for key, value in bounds.items()}


def _consumers(graph: Any) -> dict[str, list[Any]]:
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _weight_inputs(node: Any) -> tuple[str, str, str | None]:
    """``(activation input, weight, bias)`` names of a layer node."""
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    return node.input[0], node.input[1], bias


def _why_float(
    node: Any, initializers: dict[str, np.ndarray], readers: dict[str, list[Any]]
) -> str | None:
    """Why a Conv/Gemm/MatMul cannot be quantized here, or None when it can."""
    if len(node.input) < 2:
        return "no weight input"
    if node.op_type == "MatMul" and node.input[0] in initializers:
        return "MatMul with the initializer as its first input (x W expected)"
    data, weight, bias = _weight_inputs(node)
    array = initializers.get(weight)
    if array is None:
        return "weight computed in the graph, not an initializer"
    if array.dtype != np.float32:
        return f"weight of dtype {array.dtype}, float32 expected"
    if len(readers.get(weight, [])) > 1:
        return "weight shared by several nodes"
    if node.op_type in ("Gemm", "MatMul") and array.ndim != 2:
        return f"{array.ndim}-D weight, 2-D expected"
    if node.op_type == "Conv" and array.ndim not in (3, 4, 5):
        return f"{array.ndim}-D Conv weight"
    if node.op_type == "Gemm" and _attributes(node).get("transA", 0):
        return "Gemm with transA=1"
    if bias is not None and (bias not in initializers or len(readers.get(bias, [])) > 1):
        return "bias computed in the graph or shared"
    if bias is not None:
        out_channels = array.shape[0] if node.op_type == "Conv" else None
        if node.op_type == "Gemm":
            out_channels = array.shape[0] if _attributes(node).get("transB", 0) else array.shape[1]
        if initializers[bias].size != out_channels:
            return "bias that is not one value per output channel"
    if data in initializers:
        return "constant input"
    return None


def _activation_after(
    output: str,
    readers: dict[str, list[Any]],
    graph_outputs: set[str],
    constants: dict[str, np.ndarray],
) -> tuple[str | None, dict[str, Any], str | None]:
    """The element-wise activation that alone reads ``output``: (op, attributes, its output)."""
    consumers = readers.get(output, [])
    if output in graph_outputs or len(consumers) != 1:
        return None, {}, None
    node = consumers[0]
    if node.op_type not in ACTIVATION_OPS:
        return None, {}, None
    attributes = _attributes(node)
    if node.op_type == "Clip":
        bounds = _clip_bounds(node, constants)
        if bounds is None:
            return None, {}, None
        attributes = bounds
    return node.op_type, attributes, node.output[0]


#: Ops that only move or cut a tensor: a weight read through them is still a weight.
_RESHAPING_OPS = ("Transpose", "Reshape", "Slice", "Split", "Squeeze", "Unsqueeze", "Identity")


def _weight_behind(
    name: str, initializers: dict[str, np.ndarray], producers: dict[str, Any]
) -> str | None:
    """The float initializer of rank >= 2 that ``name`` is cut or reshaped from, or None.

    ``nn.MultiheadAttention`` exports its packed ``in_proj_weight`` as an initializer sliced
    and transposed in the graph: such a MatMul has a weight, computed, and is listed.
    """
    for _ in range(8):  # a short chain of reshaping ops at most
        if name in initializers:
            array = initializers[name]
            return name if array.dtype == np.float32 and array.ndim >= 2 else None
        node = producers.get(name)
        if node is None or node.op_type not in _RESHAPING_OPS:
            return None
        name = node.input[0]
    return None


def _unique_name(node: Any, index: int, taken: set[str]) -> str:
    name = node.name or f"{node.op_type}_{index}"
    while name in taken:
        name = f"{name}_{index}"
    taken.add(name)
    return name


def _layer(node: Any, name: str, index: int, after: tuple) -> OnnxLayer:
    """The layer of a weighted node; ``after``: its activation, attributes and output."""
    data, weight, bias = _weight_inputs(node)
    activation, attributes, activation_output = after
    return OnnxLayer(
        name,
        node.op_type,
        index,
        data,
        node.output[0],
        weight,
        bias,
        _attributes(node),
        activation,
        attributes,
        activation_output,
    )


def find_layers(model: Any) -> OnnxGraph:
    """Read the quantizable layers of a float ONNX classifier.

    Args:
        model: An ``onnx.ModelProto`` with one data input.

    Returns:
        The graph with its layers and the weighted nodes left in float (with reasons).

    Raises:
        ValueError: When the graph has no data input or more than one.

    Example:
        >>> from onnx import TensorProto, helper, numpy_helper
        >>> w = numpy_helper.from_array(np.ones((3, 4), np.float32), "w")
        >>> graph = helper.make_graph(
        ...     [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)], "g",
        ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
        >>> [layer.name for layer in find_layers(helper.make_model(graph)).layers]
        ['fc']
    """
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    data_inputs = [i.name for i in graph.input if i.name not in initializers]
    if len(data_inputs) != 1:
        raise ValueError(f"the model has {len(data_inputs)} data inputs, one image input expected")
    found = OnnxGraph(model, initializers, data_inputs[0], graph.output[0].name)
    readers, constants = _consumers(graph), _constant_values(graph, initializers)
    producers = {output: node for node in graph.node for output in node.output}
    graph_outputs = {o.name for o in graph.output}
    taken: set[str] = set()
    for index, node in enumerate(graph.node):
        if node.op_type not in LAYER_OPS:
            continue
        name = _unique_name(node, index, taken)
        reason = _why_float(node, initializers, readers)
        if reason is not None:
            behind = [_weight_behind(i, initializers, producers) for i in node.input[:2]]
            if node.op_type != "MatMul" or any(behind):
                weight = next((b for b in behind if b), None)
                found.left_in_float[name] = reason + (f" (from {weight})" if weight else "")
            continue  # a MatMul of two activations (attention scores) has no weight
        after = _activation_after(node.output[0], readers, graph_outputs, constants)
        found.layers.append(_layer(node, name, index, after))
    return found

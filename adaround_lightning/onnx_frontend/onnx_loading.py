"""Load a float ONNX model for the ONNX path: checked, at opset 13 or newer, its layers found.

Weights and biases that an exporter wrote as ``Identity``/``Constant`` outputs or shared between
layers are normalized into initializers of their own first (:func:`_normalized`, logged): the
quantized graph is written into that normalized copy.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from adaround_lightning.core.errors import UserError
from adaround_lightning.onnx_frontend.onnx_graph import OnnxGraph, find_layers

__all__ = ["MIN_OPSET", "load_onnx"]

log = logging.getLogger(__name__)

#: Per-axis ``DequantizeLinear`` (per-channel weights) needs opset 13.
MIN_OPSET = 13


def _default_opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _read(model: Any) -> Any:
    import onnx

    if not isinstance(model, (str, Path)):
        return model
    path = Path(model)
    if not path.is_file():
        raise UserError(f"model.onnx={path}: no such file; pass the path of a float .onnx model")
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError and friends
        raise UserError(
            f"model.onnx={path} is not an ONNX model ({type(error).__name__})"
        ) from None


def _upgraded(model: Any) -> Any:
    """The model at opset :data:`MIN_OPSET` when it is older (logged)."""
    from onnx import version_converter

    opset = _default_opset(model)
    if opset >= MIN_OPSET:
        return model
    try:
        upgraded = version_converter.convert_version(model, MIN_OPSET)
    except Exception as error:  # the converter raises plain RuntimeErrors
        raise UserError(
            f"the model has opset {opset}; per-channel DequantizeLinear needs {MIN_OPSET} and "
            f"onnx's version converter failed ({str(error).splitlines()[0][:200]}): export it "
            f"at opset {MIN_OPSET} or newer"
        ) from None
    log.info("model.onnx: opset %d converted to %d (per-axis DequantizeLinear)", opset, MIN_OPSET)
    return upgraded


#: The inputs of each layer op that hold its weight and bias.
_PARAMETER_SLOTS = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,)}


def _constant_producers(graph: Any) -> dict[str, Any]:
    """Per tensor made by ``Identity(initializer)`` or ``Constant``, its value as an initializer."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    produced = {}
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            array = numpy_helper.to_array(initializers[node.input[0]])
            produced[node.output[0]] = (node, numpy_helper.from_array(array, node.output[0]))
        elif node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            value = numpy_helper.to_array(node.attribute[0].t)
            produced[node.output[0]] = (node, numpy_helper.from_array(value, node.output[0]))
    return produced


def _normalized(model: Any) -> Any:
    """Weights and biases as initializers of their own layer (a copy of the model; logged).

    Exporters deduplicate equal tensors: torch's gives two layers with equal (e.g. zero)
    biases one initializer behind ``Identity`` nodes, and some write weights as ``Constant``
    nodes. Such a producer feeding a layer's weight or bias slot becomes an initializer of the
    same name (the node goes; every reader reads the initializer); a bias read by several nodes
    gets one copy per layer.
    """
    import copy

    model = copy.deepcopy(model)
    graph = model.graph
    producers = _constant_producers(graph)
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    inlined, copies = set(), []
    for node in graph.node:
        for slot in _PARAMETER_SLOTS.get(node.op_type, ()):
            name = node.input[slot] if len(node.input) > slot else ""
            if name in producers:  # its readers read the initializer of that name instead
                inlined.add(name)
            if slot == 2 and readers.get(name, 0) > 1:
                copies.append((node, name))
    graph.initializer.extend(producers[name][1] for name in sorted(inlined))
    # Before the node list is rebuilt: extend() copies messages, so edits must come first.
    _copy_shared_biases(graph, copies)
    kept = [node for node in graph.node if not set(node.output) & inlined]
    del graph.node[:]
    graph.node.extend(kept)
    if inlined or copies:
        log.info(
            "model.onnx: %d constant weight/bias producers made initializers, %d shared biases "
            "copied per layer",
            len(inlined),
            len(copies),
        )
    return model


def _copy_shared_biases(graph: Any, copies: list[tuple[Any, str]]) -> None:
    """Give each layer reading a shared bias initializer a copy of its own."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    for index, (node, name) in enumerate(copies):
        if name not in initializers:
            continue  # computed in the graph: the layer stays float, with that reason
        own = f"{name}.{node.name or node.op_type}_{index}"
        array = numpy_helper.to_array(initializers[name])
        graph.initializer.append(numpy_helper.from_array(array, own))
        node.input[2] = own


def load_onnx(model: Any) -> OnnxGraph:
    """A checked float ONNX model (path or ``ModelProto``) and its quantizable layers.

    Raises:
        UserError: A missing or unreadable file, an invalid graph, more than one data input.

    Example:
        >>> try:
        ...     load_onnx("missing.onnx")
        ... except UserError as error:
        ...     print(str(error).split(";")[0])
        model.onnx=missing.onnx: no such file
    """
    import onnx

    proto = _normalized(_upgraded(_read(model)))
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        raise UserError(f"model.onnx is not a valid graph: {str(error).splitlines()[0]}") from None
    try:
        graph = find_layers(proto)
    except ValueError as error:
        raise UserError(f"model.onnx: {error}") from None
    if not graph.layers:
        raise UserError("model.onnx has no Conv, Gemm or MatMul with a float weight to quantize")
    for name, reason in graph.left_in_float.items():
        log.warning("%s left in float: %s", name, reason)
    return graph

"""Load a float ONNX model for the ONNX path: checked, at opset 13 or newer, its layers found."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from adaround_lightning.core.errors import UserError
from adaround_lightning.onnx_model.graph import OnnxGraph, find_layers

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

    proto = _upgraded(_read(model))
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

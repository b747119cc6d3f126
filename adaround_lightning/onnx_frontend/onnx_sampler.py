"""Run an ONNX graph in onnxruntime with chosen weights and read any layer's input or output.

One session serves the whole calibration: the weights and biases of the layers being quantized
become graph *inputs*, fed at every run (the float ones, or the rounded ones so far), and every
layer's input, output and activation output become graph outputs. So the float graph and the
partly quantized graph are the same session with other feeds, and no session is rebuilt per
layer. Runs go in chunks of the calibration set; a graph whose batch axis is fixed runs in
chunks of that size.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from adaround_lightning.core.errors import UserError
from adaround_lightning.onnx_frontend.onnx_graph import OnnxGraph

__all__ = ["OnnxSampler", "fixed_batch", "ort_session", "run_in_chunks"]

log = logging.getLogger(__name__)


def ort_session(model_bytes: bytes, threads: int = 0) -> Any:
    """A CPU onnxruntime session with basic graph optimizations only.

    onnxruntime's extended optimizations fuse ``DequantizeLinear`` + ``MatMul`` into integer
    kernels that compute otherwise than the float graph; basic ones keep its numerics.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _sampling_model(graph: OnnxGraph, variables: list[str], fetchable: list[str]) -> Any:
    """A copy of the graph with ``variables`` as inputs and ``fetchable`` as outputs."""
    from onnx import TensorProto, helper

    model = copy.deepcopy(graph.model)
    moved = set(variables)
    kept = [init for init in model.graph.initializer if init.name not in moved]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    listed = {value.name for value in model.graph.input}
    for name in variables:
        if name not in listed:
            shape = list(graph.initializers[name].shape)
            model.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    outputs = {value.name for value in model.graph.output}
    for name in fetchable:
        if name not in outputs:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
            outputs.add(name)
    return model


def run_in_chunks(
    session: Any,
    input_name: str,
    images: np.ndarray,
    fetch: list[str],
    feeds: dict[str, np.ndarray],
    chunk: int,
    fixed_batch: int | None = None,
) -> Iterator[list[np.ndarray]]:
    """Run ``session`` on chunks of ``images``; a fixed batch axis gets a zero-padded last chunk.

    Raises:
        UserError: When onnxruntime cannot run the graph on inputs of this shape.
    """
    chunk = fixed_batch or chunk
    for start in range(0, len(images), chunk):
        batch = images[start : start + chunk]
        rows = len(batch)
        if fixed_batch and rows < fixed_batch:  # pad the last chunk, drop the padding after
            pad = np.zeros((fixed_batch - rows, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, pad])
        try:
            outputs = session.run(fetch, {input_name: batch, **feeds})
        except Exception as error:  # onnxruntime raises its own types
            raise UserError(
                f"onnxruntime cannot run the model on inputs of shape {list(batch.shape)}: "
                f"{str(error).splitlines()[0][:300]}; export it for inputs of the data's "
                "size (data.image_size), with a dynamic or matching batch axis"
            ) from None
        yield [output[:rows] for output in outputs]


def fixed_batch(model: Any, input_name: str) -> int | None:
    """The input's batch size when the graph fixes it, else None."""
    for value in model.graph.input:
        if value.name == input_name:
            dims = value.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
                return int(dims[0].dim_value)
    return None


def _prefix_model(model: Any, tensors: list[str]) -> Any:
    """The nodes that ``tensors`` (the outputs) need; None with control-flow subgraphs.

    Nodes are in topological order, so one backward sweep finds what ``tensors`` need. ``If``
    and ``Loop`` bodies read outer tensors by name: such graphs are run whole.
    """
    from onnx import AttributeProto, TensorProto, helper

    graph = model.graph
    subgraph_types = (AttributeProto.GRAPH, AttributeProto.GRAPHS)
    if any(a.type in subgraph_types for node in graph.node for a in node.attribute):
        return None
    needed, kept = set(tensors), []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    prefix = helper.make_graph(
        list(reversed(kept)),
        graph.name,
        [value for value in graph.input if value.name in needed],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in tensors],
        [init for init in graph.initializer if init.name in needed],
    )
    return helper.make_model(prefix, opset_imports=model.opset_import, ir_version=model.ir_version)


class OnnxSampler:
    """Layer inputs and outputs of an ONNX graph on the calibration data, for any weights.

    Args:
        graph: The float graph and its layers.
        variables: Initializers fed at every run (the layers' weights and biases).
        chunk: Samples per run (a fixed batch axis overrides it).
        threads: onnxruntime's intra-op threads (0: its default).

    Example:
        >>> from adaround_lightning.onnx_frontend.onnx_graph import find_layers
        >>> from onnx import TensorProto, helper, numpy_helper
        >>> w = numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")
        >>> g = helper.make_graph(
        ...     [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])], [w])
        >>> model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        >>> sampler = OnnxSampler(find_layers(model), ["w"])
        >>> sampler.run(np.ones((3, 2), np.float32), ["y"], {"w": 2 * np.eye(2, dtype=np.float32)})
        [array([[2., 2.],
               [2., 2.],
               [2., 2.]], dtype=float32)]
    """

    def __init__(
        self,
        graph: OnnxGraph,
        variables: list[str],
        chunk: int = 256,
        threads: int = 0,
        model: Any = None,
    ) -> None:
        fetchable = [graph.output_name]
        for layer in graph.layers:
            fetchable += [layer.input, layer.output]
            fetchable += [layer.activation_output] if layer.activation_output else []
        self.graph, self.threads = graph, threads
        self.model = model or _sampling_model(graph, list(variables), fetchable)
        listed = {value.name for value in self.model.graph.input}
        self.variables = [name for name in variables if name in listed]
        self.fixed_batch = fixed_batch(self.model, graph.input_name)
        self.chunk = self.fixed_batch or chunk
        try:
            self.session = ort_session(self.model.SerializeToString(), threads)
        except Exception as error:  # onnxruntime raises its own types
            raise UserError(
                f"onnxruntime cannot load the model: {str(error).splitlines()[0]}; check it "
                "with onnx.checker.check_model"
            ) from None

    def up_to(self, tensors: list[str]) -> OnnxSampler:
        """A sampler of the nodes that ``tensors`` need alone (itself when it cannot tell).

        onnxruntime runs every node of a session whatever is fetched: a layer's input and
        output come from its prefix of the graph, on average half of it.
        """
        prefix = _prefix_model(self.model, tensors)
        if prefix is None:
            return self
        return OnnxSampler(self.graph, self.variables, self.chunk, self.threads, prefix)

    def chunks(
        self, images: np.ndarray, fetch: list[str], values: dict[str, np.ndarray]
    ) -> Iterator[list[np.ndarray]]:
        """Per chunk of ``images``, the ``fetch`` tensors with ``values`` as the variables."""
        feeds = {name: values[name] for name in self.variables}
        return run_in_chunks(
            self.session, self.graph.input_name, images, fetch, feeds, self.chunk, self.fixed_batch
        )

    def run(
        self, images: np.ndarray, fetch: list[str], values: dict[str, np.ndarray]
    ) -> list[np.ndarray]:
        """The ``fetch`` tensors over all of ``images`` (concatenated along the batch axis)."""
        parts = list(self.chunks(images, fetch, values))
        return [np.concatenate([part[i] for part in parts]) for i in range(len(fetch))]

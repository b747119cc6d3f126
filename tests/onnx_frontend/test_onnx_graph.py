"""Which nodes of an ONNX graph are quantizable layers, what follows them, what stays float."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from adaround_lightning.core.errors import UserError
from adaround_lightning.onnx_frontend.onnx_graph import find_layers
from adaround_lightning.onnx_frontend.onnx_loading import load_onnx
from tests.onnx_frontend.helpers import small_cnn_onnx


def test_torch_export_layers_and_their_activations(tmp_path) -> None:
    graph = find_layers(onnx.load(str(small_cnn_onnx(tmp_path))))
    kinds = [(layer.op_type, layer.activation) for layer in graph.layers]
    # stem: Conv (BN folded) + Clip(0, 6); depthwise + Relu; pointwise feeds the Add; fc.
    assert kinds == [("Conv", "Clip"), ("Conv", "Relu"), ("Conv", None), ("Gemm", None)]
    assert graph.layers[0].activation_attributes == {"min": 0.0, "max": 6.0}
    assert graph.left_in_float == {}
    assert len({layer.name for layer in graph.layers}) == 4


def _graph(nodes, initializers, inputs=("x",)):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 4]) for n in inputs],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(a, n) for n, a in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_what_stays_float_is_listed_with_a_reason() -> None:
    w = np.ones((4, 4), np.float32)
    model = _graph(
        [
            helper.make_node("MatMul", ["x", "shared"], ["a"], name="first"),
            helper.make_node("MatMul", ["a", "shared"], ["b"], name="second"),
            helper.make_node("Identity", ["w"], ["w_copy"]),
            helper.make_node("Gemm", ["b", "w_copy"], ["c"], name="computed"),
            helper.make_node("MatMul", ["c", "c"], ["d"], name="scores"),  # no weight at all
            helper.make_node("Transpose", ["packed"], ["packed_t"]),
            helper.make_node("MatMul", ["d", "packed_t"], ["e"], name="sliced"),
            helper.make_node("MatMul", ["e", "own"], ["out"], name="fine"),
        ],
        {"shared": w, "w": w, "own": w, "packed": w},
    )
    graph = find_layers(model)
    assert [layer.name for layer in graph.layers] == ["fine"]
    assert set(graph.left_in_float) == {"first", "second", "computed", "sliced"}
    assert "from packed" in graph.left_in_float["sliced"]
    assert "shared" in graph.left_in_float["first"]
    assert "computed in the graph" in graph.left_in_float["computed"]


def test_an_activation_with_two_readers_is_not_folded() -> None:
    model = _graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
            helper.make_node("Relu", ["y"], ["r"]),
            helper.make_node("Add", ["y", "r"], ["out"]),
        ],
        {"w": np.ones((4, 4), np.float32)},
    )
    assert find_layers(model).layers[0].activation is None


def test_two_data_inputs_are_refused() -> None:
    model = _graph(
        [helper.make_node("MatMul", ["x", "z"], ["out"])],
        {},
        inputs=("x", "z"),
    )
    with pytest.raises(ValueError, match="2 data inputs"):
        find_layers(model)


def test_an_old_opset_is_converted(tmp_path) -> None:
    old = onnx.load(str(small_cnn_onnx(tmp_path, opset=11)))
    assert next(o.version for o in old.opset_import if o.domain == "") == 11
    graph = load_onnx(old)
    assert next(o.version for o in graph.model.opset_import if o.domain == "") >= 13
    assert len(graph.layers) == 4


def test_a_file_that_is_not_onnx(tmp_path) -> None:
    path = tmp_path / "text.onnx"
    path.write_text("not a model")
    with pytest.raises(UserError, match="is not an ONNX model"):
        load_onnx(path)


def test_deduplicated_constants_are_normalized_without_changing_the_function(tmp_path) -> None:
    # Untrained BatchNorms fold into equal (zero) biases: torch's exporter keeps one
    # initializer behind Identity nodes, which would leave every layer float.
    import torch
    from torch import nn

    from adaround_lightning.export.onnx import export_float_onnx
    from tests.onnx_frontend.helpers import ort_run

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(4),
    ).eval()  # fmt: skip
    path = tmp_path / "dedup.onnx"
    export_float_onnx(net, torch.randn(2, 3, 8, 8), path)
    original = onnx.load(str(path))
    assert "Identity" in {node.op_type for node in original.graph.node}
    graph = load_onnx(original)
    assert len(graph.layers) == 2 and not graph.left_in_float
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(ort_run(graph.model, x), ort_run(original, x))


def test_a_bias_read_by_several_nodes_gets_a_copy_per_layer() -> None:
    from tests.onnx_frontend.helpers import ort_run

    rng = np.random.default_rng(1)
    model = _graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b"], ["y"], name="first", transB=1),
            helper.make_node("Identity", ["b"], ["b_alias"]),
            helper.make_node("Gemm", ["y", "w2", "b_alias"], ["z"], name="second", transB=1),
            helper.make_node("Add", ["z", "b"], ["out"]),
        ],
        {
            "w1": rng.standard_normal((4, 4)).astype(np.float32),
            "w2": rng.standard_normal((4, 4)).astype(np.float32),
            "b": rng.standard_normal(4).astype(np.float32),
        },
    )
    graph = load_onnx(model)
    assert [layer.name for layer in graph.layers] == ["first", "second"]
    assert not graph.left_in_float
    assert len({layer.bias for layer in graph.layers}) == 2
    x = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(ort_run(graph.model, x), ort_run(model, x))

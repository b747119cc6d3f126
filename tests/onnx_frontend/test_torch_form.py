"""Each layer's PyTorch form computes what onnxruntime computes, on fresh random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adaround_lightning.onnx_frontend.onnx_graph import find_layers
from adaround_lightning.onnx_frontend.torch_form import activation_module, torch_form
from tests.onnx_frontend.helpers import ort_run, single_node_model


def _form_matches_ort(model, x: np.ndarray) -> None:
    graph = find_layers(model)
    (layer,) = graph.layers
    form = torch_form(layer, graph.initializers, list(x.shape))
    expected = ort_run(model, x)
    with torch.no_grad():
        got = form.module(form.prepare(torch.from_numpy(x))).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


CONV_CASES = [
    ({"pads": [1, 1, 1, 1]}, 1),
    ({"pads": [0, 1, 2, 0], "strides": [2, 1]}, 1),  # asymmetric pads
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, 1),
    ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, 1),
    ({"auto_pad": "VALID", "dilations": [2, 1]}, 1),
    ({"pads": [1, 1, 1, 1], "group": 4}, 4),  # depthwise
    ({"pads": [0, 0, 0, 0], "group": 2}, 2),
]


@pytest.mark.parametrize(("attributes", "groups"), CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_matches_onnxruntime(attributes, groups, bias) -> None:
    rng = np.random.default_rng(len(str(attributes)) + groups)
    weights = {"w": rng.standard_normal((8, 4 // groups, 3, 3))}
    if bias:
        weights["b"] = rng.standard_normal(8)
    model = single_node_model("Conv", [2, 4, 9, 7], weights, list(weights), **attributes)
    _form_matches_ort(model, rng.standard_normal((2, 4, 9, 7)).astype(np.float32))


def test_conv1d_matches_onnxruntime() -> None:
    rng = np.random.default_rng(3)
    weights = {"w": rng.standard_normal((5, 3, 3)), "b": rng.standard_normal(5)}
    model = single_node_model("Conv", [2, 3, 11], weights, ["w", "b"], pads=[2, 0], strides=[2])
    _form_matches_ort(model, rng.standard_normal((2, 3, 11)).astype(np.float32))


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.5, 2.0)])
def test_gemm_matches_onnxruntime(trans_b, alpha, beta) -> None:
    rng = np.random.default_rng(trans_b + 10 * int(alpha * 2))
    weight = rng.standard_normal((3, 6) if trans_b else (6, 3))
    weights = {"w": weight, "c": rng.standard_normal(3)}
    model = single_node_model(
        "Gemm", [4, 6], weights, ["w", "c"], transB=trans_b, alpha=alpha, beta=beta
    )
    graph = find_layers(model)
    form = torch_form(graph.layers[0], graph.initializers, [4, 6])
    assert form.transposed == (not trans_b)
    # The bias the module holds is beta * C, and the export gives C back.
    np.testing.assert_allclose(form.onnx_bias(), weights["c"], rtol=1e-6)
    _form_matches_ort(model, rng.standard_normal((4, 6)).astype(np.float32))


def test_matmul_on_three_dimensional_input() -> None:
    rng = np.random.default_rng(5)
    model = single_node_model("MatMul", [2, 5, 6], {"w": rng.standard_normal((6, 4))}, ["w"])
    _form_matches_ort(model, rng.standard_normal((2, 5, 6)).astype(np.float32))


def test_weight_layout_round_trips() -> None:
    rng = np.random.default_rng(6)
    weight = rng.standard_normal((6, 4)).astype(np.float32)
    graph = find_layers(single_node_model("MatMul", [2, 6], {"w": weight}, ["w"]))
    form = torch_form(graph.layers[0], graph.initializers, [2, 6])
    np.testing.assert_array_equal(form.onnx_weight(form.module.weight), weight)


@pytest.mark.parametrize(
    ("op_type", "attributes"),
    [
        ("Relu", {}),
        ("LeakyRelu", {"alpha": 0.2}),
        ("Sigmoid", {}),
        ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
        ("HardSwish", {}),
    ],
)
def test_activation_matches_onnxruntime(op_type, attributes) -> None:
    from onnx import TensorProto, helper

    node = helper.make_node(op_type, ["x"], ["y"], **attributes)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [50])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [50])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(7).standard_normal(50).astype(np.float32) * 4
    got = activation_module(op_type, attributes)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ort_run(model, x), rtol=1e-5, atol=1e-6)

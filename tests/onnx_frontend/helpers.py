"""Small ONNX graphs built node by node, and torch networks exported to ONNX, for the ONNX tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from adaround_lightning.export.onnx import export_float_onnx
from adaround_lightning.onnx_frontend.onnx_sampler import ort_session


def single_node_model(
    op_type: str,
    input_shape: list,
    initializers: dict[str, np.ndarray],
    inputs: list[str],
    **attributes,
) -> onnx.ModelProto:
    """``y = op(x, *initializers)``: one node, ``x`` of ``input_shape``, opset 17."""
    node = helper.make_node(op_type, ["x", *inputs], ["y"], name="layer", **attributes)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a.astype(np.float32), n) for n, a in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """onnxruntime's output of a one-input model: the independent reference."""
    session = ort_session(model.SerializeToString())
    return session.run(None, {session.get_inputs()[0].name: x})[0]


class SmallCNN(nn.Module):
    """Conv-BN-ReLU6, a depthwise conv, a residual add, a classifier: what torch exports."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.pointwise(torch.relu(self.depthwise(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def small_cnn_onnx(
    folder: Path, image_size: int = 8, seed: int = 0, num_classes: int = 4, opset: int = 17
) -> Path:
    """A seeded :class:`SmallCNN` (random BatchNorm statistics) exported as float ONNX."""
    torch.manual_seed(seed)
    model = SmallCNN(num_classes)
    bn = model.stem[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 1.5)
    path = folder / "small_cnn.onnx"
    export_float_onnx(model.eval(), torch.randn(2, 3, image_size, image_size), path, opset)
    return path

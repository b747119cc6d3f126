"""Export containers and targets: 4-bit ONNX weights, TensorRT's int8 Q/DQ, target checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from adaround_lightning import AdaroundConfig, QuantConfig, adaround
from adaround_lightning.core.errors import UserError
from adaround_lightning.export import ExportConfig, export_run, verify_grid
from adaround_lightning.export.export_config import check_target


def _session_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options)
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node outputs by tensor name."""
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _symmetric_a8(model: nn.Module, images: torch.Tensor):
    """W4 with symmetric int8 input grids (TensorRT's form)."""
    quant = QuantConfig(weight_bits=4, act_bits=8, act_symmetric=True)
    return adaround(
        model, images, quant, AdaroundConfig(iters=8, batch_size=16), {"accelerator": "cpu"}
    )


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_four_bit_containers_give_the_int8_files_logits_in_fewer_bytes(
    tiny_cnn: nn.Module, images: torch.Tensor, bits: int, tmp_path: Path
) -> None:
    result = adaround(
        tiny_cnn,
        images,
        QuantConfig(weight_bits=bits),
        AdaroundConfig(iters=8, batch_size=16, seed=bits),
        {"accelerator": "cpu"},
    )
    export_run(result, tmp_path / "int4", images[:2], ExportConfig())
    export_run(result, tmp_path / "int8", images[:2], ExportConfig(container="int8"))
    int4, int8 = tmp_path / "int4" / "model.onnx", tmp_path / "int8" / "model.onnx"
    types = {
        name: {i.data_type for i in onnx.load(str(path)).graph.initializer if "quantized" in i.name}
        for name, path in (("int4", int4), ("int8", int8))
    }
    assert types == {"int4": {onnx.TensorProto.INT4}, "int8": {onnx.TensorProto.INT8}}
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(bits))
    a, b = _session_logits(int4, x), _session_logits(int8, x)
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, float(np.abs(b).max()))
    assert int4.stat().st_size < int8.stat().st_size
    assert verify_grid(tmp_path / "int4")["onnx_containers"] == {"INT4": len(result.quantizers)}
    assert verify_grid(tmp_path / "int8")["onnx_containers"] == {"INT8": len(result.quantizers)}


def test_tensorrt_target_has_only_int8_zero_point_0_q_dq(
    tiny_cnn: nn.Module, images: torch.Tensor, tmp_path: Path
) -> None:
    result = _symmetric_a8(tiny_cnn, images)
    export_run(result, tmp_path, images[:2], ExportConfig(target="tensorrt"))
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    values = _constants(graph)
    q_dq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    # Every weight's DequantizeLinear and every input's QuantizeLinear/DequantizeLinear pair.
    assert len(q_dq) == 3 * len(result.quantizers)
    for node in q_dq:
        assert len(node.input) == 3, f"{node.name}: no explicit zero point (defaults to uint8)"
        zero_point = values[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
        if node.op_type == "DequantizeLinear" and node.input[0] in values:  # a weight
            assert values[node.input[0]].dtype == np.int8
    assert verify_grid(tmp_path)["activation_grids"] == len(result.quantizers)


def test_symmetric_activation_grids_keep_parity_with_onnxruntime(
    tiny_cnn: nn.Module, images: torch.Tensor, tmp_path: Path
) -> None:
    result = _symmetric_a8(tiny_cnn, images)
    assert all(int(aq.zero_point) == 0 for aq in result.act_quantizers.values())
    export_run(result, tmp_path, images[:2], ExportConfig())
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = result.model.cpu()(x).numpy()
    got = _session_logits(tmp_path / "model.onnx", x)
    # Float sums in another order may cross a rounding edge: most values agree to float noise.
    assert np.mean(np.abs(got - expected) < 1e-4) > 0.95


@pytest.mark.parametrize(
    ("act_bits", "symmetric", "fragment"),
    [(4, True, "8 bits only"), (8, False, "quant.act_symmetric=true")],
)
def test_tensorrt_refuses_what_it_cannot_represent(
    act_bits: int, symmetric: bool, fragment: str
) -> None:
    with pytest.raises(UserError, match=fragment):
        check_target(ExportConfig(target="tensorrt"), act_bits, symmetric)
    check_target(ExportConfig(target="tensorrt"), None, False)  # weights only: fine
    check_target(ExportConfig(), act_bits, symmetric)  # generic: anything


def test_int4_only_at_opset_21_and_at_most_4_bits() -> None:
    assert ExportConfig().int4_weights(4) and not ExportConfig().int4_weights(5)
    assert not ExportConfig(opset=20).int4_weights(2)
    assert not ExportConfig(container="int8").int4_weights(2)
    assert not ExportConfig(target="tensorrt").int4_weights(2)
    with pytest.raises(UserError, match=r"export\.opset must be >= 13"):
        ExportConfig(opset=11)

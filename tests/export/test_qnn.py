"""QNN / AIMET-ONNX files: encodings keyed by tensor names of model.onnx, integers kept exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from adaround_lightning import AdaroundConfig, QuantConfig, adaround
from adaround_lightning.export import ExportConfig, export_run, load_quantized_weights
from adaround_lightning.export.onnx import onnx_logits


def _tensor_names(path: Path) -> set[str]:
    graph = onnx.load(str(path)).graph
    names = {i.name for i in graph.initializer} | {i.name for i in graph.input}
    for node in graph.node:
        names |= set(node.input) | set(node.output)
    return names


@pytest.mark.parametrize(("act_bits", "symmetric"), [(None, False), (8, False), (8, True)])
def test_qnn_encodings_name_tensors_of_model_onnx_and_keep_the_integers(
    tiny_cnn: nn.Module, images: torch.Tensor, act_bits: int | None, symmetric: bool, tmp_path: Path
) -> None:
    result = adaround(
        tiny_cnn,
        images,
        QuantConfig(weight_bits=3, act_bits=act_bits, act_symmetric=symmetric),
        AdaroundConfig(iters=8, batch_size=16),
        {"accelerator": "cpu"},
    )
    outputs = export_run(result, tmp_path, images[:2], ExportConfig(target="qnn"))["outputs"]
    assert outputs["qnn_onnx"] == "model_qnn.onnx"
    document = json.loads((tmp_path / "model_qnn.encodings").read_text())
    assert document["version"] == "1.0.0"
    params, acts = document["param_encodings"], document["activation_encodings"]
    assert len(params) == len(result.quantizers)
    assert len(acts) == (0 if act_bits is None else len(result.quantizers))
    keys = {e["name"] for e in params + acts}
    assert keys <= _tensor_names(tmp_path / "model.onnx")
    assert keys <= _tensor_names(tmp_path / "model_qnn.onnx")
    # The float graph has no Q/DQ left: the encodings describe the grids.
    qnn = onnx.load(str(tmp_path / "model_qnn.onnx")).graph
    assert not [n for n in qnn.node if "Quantize" in n.op_type]
    # Each weight is s * q exactly: AIMET's integers round(W / s) equal ours.
    floats = {i.name: numpy_helper.to_array(i) for i in qnn.initializer}
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    tensor_of = {
        n.input[0].removesuffix(".weight_quantized"): n.output[0]
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0].endswith(".weight_quantized")
    }
    by_name = {e["name"]: e for e in params}
    for layer in load_quantized_weights(tmp_path / "quantized_weights.safetensors"):
        entry = by_name[tensor_of[layer.name]]
        assert entry["bw"] == 3 and entry["is_sym"] and set(entry["offset"]) == {-4}
        scale = np.array(entry["scale"], np.float64)
        w = floats[tensor_of[layer.name]].astype(np.float64)
        shape = (-1,) + (1,) * (w.ndim - 1) if scale.size > 1 else ()
        q = np.rint(w / scale.reshape(shape))
        assert np.array_equal(q, layer.q.numpy().astype(np.float64))
    for entry in acts:
        assert entry["enc_type"] == "PER_TENSOR" and entry["bw"] == act_bits
        assert entry["is_sym"] == symmetric
        assert entry["offset"][0] == (-128 if symmetric else entry["offset"][0])
    scales = sorted(e["scale"][0] for e in acts)
    ours = sorted(float(q.scale) for q in result.act_quantizers.values())
    assert np.allclose(scales, ours, rtol=1e-7)
    if act_bits is None:  # weights only: the float graph computes what model.onnx does
        x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        a, b = onnx_logits(tmp_path / "model_qnn.onnx", x), onnx_logits(tmp_path / "model.onnx", x)
        assert np.abs(a - b).max() <= 1e-5 * max(1.0, float(np.abs(b).max()))


def test_grid_check_reads_the_qnn_files(tiny_cnn: nn.Module, images: torch.Tensor, tmp_path: Path):
    from adaround_lightning.export import GridCheckError, verify_grid

    result = adaround(
        tiny_cnn,
        images,
        QuantConfig(weight_bits=4),
        AdaroundConfig(iters=8, batch_size=16),
        {"accelerator": "cpu"},
    )
    export_run(result, tmp_path, images[:2], ExportConfig(target="qnn"))
    assert verify_grid(tmp_path)["qnn_weights"] == len(result.quantizers)
    path = tmp_path / "model_qnn.encodings"
    document = json.loads(path.read_text())
    document["param_encodings"][0]["scale"][0] *= 1.5
    path.write_text(json.dumps(document))
    with pytest.raises(GridCheckError, match=r"model_qnn\.onnx or its encoding differs"):
        verify_grid(tmp_path)
    document["param_encodings"][0]["name"] = "no_such_tensor"
    path.write_text(json.dumps(document))
    with pytest.raises(GridCheckError, match=r"not tensors of model\.onnx"):
        verify_grid(tmp_path)

"""The grid check recomputes from the float network and reads every field it vouches for.

Each test tampers with one thing that the old check (integers rebuilt from the saved
``floor(W/s)``, ONNX integers only, encodings' scales only, no logit bound) let through.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from adaround_lightning import AdaroundConfig, QuantConfig, adaround
from adaround_lightning.export import ExportConfig, GridCheckError, export_run, verify_grid
from adaround_lightning.export.grid_check import LOGIT_TOLERANCE


@pytest.fixture
def run_dir(tiny_cnn: nn.Module, images: torch.Tensor, tmp_path: Path) -> Path:
    result = adaround(
        tiny_cnn,
        images,
        QuantConfig(weight_bits=4, per_channel=True),
        AdaroundConfig(iters=8, batch_size=16, seed=4),
        {"accelerator": "cpu"},
    )
    export_run(result, tmp_path, images[:2], ExportConfig(onnx=True))
    report = verify_grid(tmp_path)
    assert report["passed"] and "float_weights" in report["rounding_reference"]
    return tmp_path


def _rewrite_onnx(path: Path, edit) -> None:
    model = onnx.load(str(path))
    edit(model.graph)
    onnx.save(model, str(path))


def _first_dequantize(graph) -> onnx.NodeProto:
    return next(n for n in graph.node if n.op_type == "DequantizeLinear")


def test_a_consistent_lie_about_floor_is_caught_from_the_float_weights(run_dir: Path) -> None:
    # Shift one integer and the saved floor(W/s) together, and keep every other file in step:
    # the old check rebuilt its expectation from that saved floor and passed.
    (run_dir / "model.onnx").unlink()
    weights_path = run_dir / "quantized_weights.safetensors"
    with safe_open(str(weights_path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(weights_path))
    states = torch.load(run_dir / "adaround_state.pt", weights_only=True)
    name = "depthwise"
    q = tensors[f"{name}.q"].view(-1)
    k = int(torch.nonzero(q < 7)[0])
    q[k] += 1
    states[name]["weight_floor"].view(-1)[k] += 1
    save_file(tensors, str(weights_path), metadata=metadata)
    torch.save(states, run_dir / "adaround_state.pt")
    model_state = torch.load(run_dir / "quantized_model.pt", weights_only=True)
    scale = tensors[f"{name}.scale"].reshape(-1, *([1] * (tensors[f"{name}.q"].dim() - 1)))
    model_state[f"{name}.weight"] = tensors[f"{name}.q"].float() * scale
    torch.save(model_state, run_dir / "quantized_model.pt")
    with pytest.raises(GridCheckError, match=r"depthwise: 1 integers differ.*float_weights"):
        verify_grid(run_dir)


def test_onnx_scales_zero_points_and_axis_are_checked(run_dir: Path) -> None:
    path = run_dir / "model.onnx"
    original = path.read_bytes()

    def zero_point(graph) -> None:
        node = _first_dequantize(graph)
        if len(node.input) < 3:  # a 4-bit container leaves ONNX's default zero point, 0, out
            q = next(i for i in graph.initializer if i.name == node.input[0])
            scale = next(i for i in graph.initializer if i.name == node.input[1])
            dtype = numpy_helper.to_array(q).dtype
            zeros = np.zeros(numpy_helper.to_array(scale).shape, dtype)
            graph.initializer.append(numpy_helper.from_array(zeros, "edited_zero_point"))
            node.input.append("edited_zero_point")
        init = next(i for i in graph.initializer if i.name == node.input[2])
        array = numpy_helper.to_array(init).copy()
        array.reshape(-1)[0] = 1
        init.CopyFrom(numpy_helper.from_array(array, init.name))

    def scale(graph) -> None:
        node = _first_dequantize(graph)
        init = next(i for i in graph.initializer if i.name == node.input[1])
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))

    def axis(graph) -> None:  # dropping the attribute means ONNX's default axis, 1
        node = _first_dequantize(graph)
        del node.attribute[:]

    for edit, message in ((zero_point, "zero points"), (scale, "scales"), (axis, "axis 1")):
        path.write_bytes(original)
        _rewrite_onnx(path, edit)
        with pytest.raises(GridCheckError, match=message):
            verify_grid(run_dir)


@pytest.mark.parametrize(
    ("field", "change"),
    [("offset", 1), ("bitwidth", 1), ("min", 1e-3), ("max", -1e-3)],
)
def test_every_field_of_a_weight_encoding_is_checked(
    run_dir: Path, field: str, change: float
) -> None:
    path = run_dir / "encodings.json"
    document = json.loads(path.read_text())
    entry = next(iter(document["param_encodings"].values()))[0]
    entry[field] += change
    path.write_text(json.dumps(document))
    with pytest.raises(GridCheckError, match=r"encodings\.json has a different grid"):
        verify_grid(run_dir)


def test_the_logit_gap_must_stay_within_the_documented_bound(run_dir: Path) -> None:
    largest = 12.0
    within = {"max_abs_logit_diff": 0.5 * LOGIT_TOLERANCE * largest, "max_abs_logit": largest}
    assert verify_grid(run_dir, within)["max_abs_logit_diff"] == within["max_abs_logit_diff"]
    beyond = {"max_abs_logit_diff": 2 * LOGIT_TOLERANCE * largest, "max_abs_logit": largest}
    with pytest.raises(GridCheckError, match="logits differ from PyTorch"):
        verify_grid(run_dir, beyond)
    # A finished run's results.json is read when no figures are passed.
    (run_dir / "results.json").write_text(json.dumps({"onnx": beyond}))
    with pytest.raises(GridCheckError, match="logits differ"):
        verify_grid(run_dir)


def test_run_dirs_without_float_weights_fall_back_to_the_saved_floor(run_dir: Path) -> None:
    (run_dir / "float_weights.safetensors").unlink()
    assert "adaround_state.pt" in verify_grid(run_dir)["rounding_reference"]

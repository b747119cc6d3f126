"""Export formats: round trips, ONNX parity with onnxruntime, the grid check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from adaround_lightning import AdaroundConfig, QuantConfig, adaround
from adaround_lightning.export import (
    ExportConfig,
    GridCheckError,
    aimet_encodings,
    export_run,
    load_quantized_weights,
    onnx_logits,
    verify_grid,
)

REPO = Path(__file__).resolve().parents[1]


def _export(model: nn.Module, images: torch.Tensor, bits: int, per_channel: bool, out: Path):
    result = adaround(
        model,
        images,
        QuantConfig(weight_bits=bits, per_channel=per_channel),
        AdaroundConfig(iters=8, batch_size=16, seed=bits),
        {"accelerator": "cpu"},
    )
    export_run(result, out, images[:2], ExportConfig(onnx=True))
    return result


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("per_channel", [True, False])
def test_round_trip_and_onnx_parity(
    tiny_cnn: nn.Module, images: torch.Tensor, bits: int, per_channel: bool, tmp_path: Path
) -> None:
    result = _export(tiny_cnn, images, bits, per_channel, tmp_path)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    layers = {
        layer.name: layer
        for layer in load_quantized_weights(tmp_path / "quantized_weights.safetensors")
    }
    assert set(layers) == set(result.quantizers)
    state = torch.load(tmp_path / "quantized_model.pt", weights_only=True)
    encodings = json.loads((tmp_path / "encodings.json").read_text())["param_encodings"]
    for name, fq in result.quantizers.items():
        layer = layers[name]
        assert layer.q.dtype == torch.int8 and layer.quant_min == qmin and layer.quant_max == qmax
        assert int(layer.q.min()) >= qmin and int(layer.q.max()) <= qmax
        # Safetensors integers are the learned rounding, recomputed from V and W/s in float64.
        w = result.float_model.get_submodule(name).weight.detach().double()
        s = fq.scale.double()
        expected = torch.clamp(torch.floor(w / s) + (fq.V >= 0).double(), qmin, qmax)
        # floor in float64 may differ from float32 only where W/s is within round-off of an integer
        differs = layer.q.double() != expected
        near_integer = ((w / s) - torch.round(w / s)).abs() < 1e-5
        assert not (differs & ~near_integer).any()
        assert torch.equal(state[f"{name}.weight"], layer.q.float() * fq.scale)
        entries = encodings[f"{name}.weight"]
        assert len(entries) == (w.shape[0] if per_channel else 1)
        for entry, scale in zip(entries, layer.scale.reshape(-1).tolist(), strict=True):
            assert entry["bitwidth"] == bits and entry["offset"] == qmin
            assert entry["min"] == pytest.approx(qmin * scale) and entry["max"] == pytest.approx(
                qmax * scale
            )
    # ONNX: INT4 initializers up to 4 bits, else INT8, through DequantizeLinear; logits match.
    import onnx

    graph_model = onnx.load(str(tmp_path / "model.onnx"))
    assert [o.version for o in graph_model.opset_import if o.domain in ("", "ai.onnx")] == [21]
    graph = graph_model.graph
    dequant = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert len(dequant) == len(result.quantizers)
    weights = {i.name: i for i in graph.initializer if i.name.endswith(".weight_quantized")}
    assert len(weights) == len(result.quantizers)
    container = onnx.TensorProto.INT4 if bits <= 4 else onnx.TensorProto.INT8
    assert all(w.data_type == container for w in weights.values())
    # No float copy of a quantized weight is left in the graph.
    float_names = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert not any(f"{name}.weight" in float_names for name in result.quantizers)
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(bits))
    with torch.no_grad():
        reference = result.model(x).numpy()
    assert np.abs(onnx_logits(tmp_path / "model.onnx", x) - reference).max() < 1e-4
    assert verify_grid(tmp_path)["passed"]


def test_grid_check_catches_a_corrupted_integer(
    tiny_cnn: nn.Module, images: torch.Tensor, tmp_path: Path
) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    _export(tiny_cnn, images, 4, True, tmp_path)
    path = tmp_path / "quantized_weights.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    q = tensors["depthwise.q"]
    q.view(-1)[3] = q.view(-1)[3] + (1 if q.view(-1)[3] < 7 else -1)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(GridCheckError, match="depthwise"):
        verify_grid(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "adaround_lightning.verify", str(tmp_path)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": ""},
    )
    assert proc.returncode == 1 and "depthwise" in proc.stderr


def test_grid_check_catches_a_weight_off_the_grid(
    tiny_cnn: nn.Module, images: torch.Tensor, tmp_path: Path
) -> None:
    _export(tiny_cnn, images, 3, False, tmp_path)
    state = torch.load(tmp_path / "quantized_model.pt", weights_only=True)
    state["fc.weight"][0, 0] += 1e-6
    torch.save(state, tmp_path / "quantized_model.pt")
    with pytest.raises(GridCheckError, match="fc"):
        verify_grid(tmp_path)


def test_aimet_encoding_fields() -> None:
    from adaround_lightning.export import QuantizedLayer

    layer = QuantizedLayer(
        "conv", torch.zeros(3, 1, dtype=torch.int8), torch.tensor(0.1), None, -4, 3
    )
    entry = aimet_encodings([layer])["param_encodings"]["conv.weight"]
    assert entry == [
        {
            "bitwidth": 3,
            "dtype": "int",
            "is_symmetric": "True",
            "max": pytest.approx(0.3),
            "min": pytest.approx(-0.4),
            "offset": -4,
            "scale": pytest.approx(0.1),
        }
    ]


@pytest.mark.parametrize("act_bits", [8, 4])
def test_activation_grids_in_every_export(
    tiny_cnn: nn.Module, images: torch.Tensor, act_bits: int, tmp_path: Path
) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from adaround_lightning.export import load_input_quantizers

    result = adaround(
        tiny_cnn,
        images,
        QuantConfig(weight_bits=4, act_bits=act_bits),
        AdaroundConfig(iters=8, batch_size=16),
        {"accelerator": "cpu"},
    )
    export_run(result, tmp_path, images[:2], ExportConfig(onnx=True))
    # safetensors and AIMET encodings: offset = -zero_point, min/max = scale * (offset + [0, q_max])
    loaded = load_input_quantizers(tmp_path / "quantized_weights.safetensors")
    encodings = json.loads((tmp_path / "encodings.json").read_text())["activation_encodings"]
    assert set(loaded) == set(encodings) == set(result.quantizers)
    for name, aq in result.act_quantizers.items():
        assert torch.equal(loaded[name].scale, aq.scale.cpu())
        assert torch.equal(loaded[name].zero_point, aq.zero_point.cpu())
        entry = encodings[name]["input"]["0"]
        assert entry["bitwidth"] == act_bits and entry["offset"] == -int(aq.zero_point)
        assert entry["min"] == pytest.approx(entry["offset"] * entry["scale"])
        assert entry["max"] == pytest.approx((entry["offset"] + 2**act_bits - 1) * entry["scale"])
    # ONNX: one QuantizeLinear per quantized layer input, with the same scales.
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    q_nodes = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert len(q_nodes) == len(result.quantizers)
    onnx_scales = sorted(float(constants[n.input[1]]) for n in q_nodes)
    ours = sorted(float(aq.scale) for aq in result.act_quantizers.values())
    assert np.allclose(onnx_scales, ours, rtol=1e-7)
    # onnxruntime runs the graph; values agree except where float noise crosses a rounding edge.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), options)
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    onnx_out = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        torch_out = result.model.cpu()(x).numpy()
    assert np.mean(np.abs(onnx_out - torch_out) < 1e-4) > 0.95
    assert verify_grid(tmp_path)["activation_grids"] == len(result.quantizers)
    # A changed activation encoding is caught.
    document = json.loads((tmp_path / "encodings.json").read_text())
    first = next(iter(document["activation_encodings"].values()))["input"]["0"]
    first["scale"] *= 1.5
    (tmp_path / "encodings.json").write_text(json.dumps(document))
    with pytest.raises(GridCheckError, match="input grid"):
        verify_grid(tmp_path)


_SAVE_IN_A_NEW_PROCESS = """
import sys, torch
from pathlib import Path
from adaround_lightning.export import quantized_layers, save_quantized_weights
from adaround_lightning.quant.factory import quantizer_for_weight
from adaround_lightning.quant.activations import ActivationQuantizer
torch.manual_seed(0)
fqs = {f"layer{i}": quantizer_for_weight(torch.randn(6, 5), 3, True, "minmax") for i in range(3)}
aq = ActivationQuantizer(8)
aq.set_range(-1.0, 3.0)
save_quantized_weights(Path(sys.argv[1]), quantized_layers(fqs), {"layer1": aq})
"""


def test_safetensors_bytes_do_not_depend_on_the_process(tmp_path: Path) -> None:
    # safetensors keeps the metadata in a Rust HashMap, whose order changes per process.
    import hashlib
    import json as json_module
    import os
    import struct
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    digests = set()
    for run in range(4):
        path = tmp_path / f"w{run}.safetensors"
        subprocess.run(
            [sys.executable, "-c", _SAVE_IN_A_NEW_PROCESS, str(path)], check=True, env=env
        )
        raw = path.read_bytes()
        digests.add(hashlib.sha256(raw).hexdigest())
        (length,) = struct.unpack("<Q", raw[:8])
        metadata = json_module.loads(raw[8 : 8 + length])["__metadata__"]
        assert list(metadata) == sorted(metadata) == ["activations", "format", "layers"]
    assert len(digests) == 1


class _TokenMLP(nn.Module):
    """Linear layers on (N, tokens, C) inputs, as in ViT and Swin MLPs: exported as MatMul."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.up, self.act, self.down = nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)  # (N, H*W, 8)
        tokens = tokens + self.down(self.act(self.up(tokens)))
        return self.head(tokens.mean(1))


@pytest.mark.parametrize("per_channel", [True, False])
def test_a_linear_on_token_inputs_exports_as_int8_with_parity(
    images: torch.Tensor, per_channel: bool, tmp_path: Path
) -> None:
    import onnx

    torch.manual_seed(0)
    result = adaround(
        _TokenMLP().eval(),
        images,
        QuantConfig(weight_bits=4, per_channel=per_channel),
        AdaroundConfig(iters=8, batch_size=16),
        {"accelerator": "cpu"},
    )
    export_run(result, tmp_path, images[:2], ExportConfig(target="qnn"))
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    dequantize = {n.input[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    assert len(dequantize) == len(result.quantizers) == 4
    q_up = next(i for i in graph.initializer if i.name == "up.weight_quantized")
    layers = {
        layer.name: layer
        for layer in load_quantized_weights(tmp_path / "quantized_weights.safetensors")
    }
    if tuple(q_up.dims) == (8, 16):  # W^T, (in, out): the channels are on axis 1
        from onnx import numpy_helper

        assert np.array_equal(numpy_helper.to_array(q_up), layers["up"].q.numpy().T)
        axes = [a.i for a in dequantize["up.weight_quantized"].attribute if a.name == "axis"]
        assert axes == ([1] if per_channel else [])
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = result.model(x).numpy()
    assert np.abs(onnx_logits(tmp_path / "model.onnx", x) - reference).max() < 1e-4
    assert np.abs(onnx_logits(tmp_path / "model_qnn.onnx", x) - reference).max() < 1e-4
    assert verify_grid(tmp_path)["qnn_weights"] == 4  # W^T weights checked too

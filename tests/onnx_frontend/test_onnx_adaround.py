"""The ONNX path end to end on a small exported CNN: the fit, the QDQ graph, the files, resume."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from adaround_lightning import AdaroundConfig, QuantConfig
from adaround_lightning.api import adaround_onnx
from adaround_lightning.core.errors import UserError
from adaround_lightning.export.grid_check import verify_grid
from adaround_lightning.onnx_frontend import onnx_adaround as calibrate_module
from tests.onnx_frontend.helpers import ort_run, small_cnn_onnx

CPU = {"accelerator": "cpu"}


def _config(**overrides) -> AdaroundConfig:
    return AdaroundConfig(**{"iters": 16, "batch_size": 16, "granularity": "layer", **overrides})


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return small_cnn_onnx(tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="module")
def images():
    return torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def calibrated(model_path, images, tmp_path_factory):
    result = adaround_onnx(model_path, images, QuantConfig(weight_bits=3), _config(), CPU)
    run_dir = tmp_path_factory.mktemp("run")
    result.save(run_dir)
    return result, run_dir


def _with_values(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The float graph with some initializers replaced (built here, not by the code)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for init in model.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(values[init.name].astype(np.float32), init.name))
    return model


def test_every_layer_is_quantized_on_its_grid(calibrated) -> None:
    result, _ = calibrated
    assert len(result.quantizers) == 4 and not result.left_in_float
    for name, quantizer in result.quantizers.items():
        q = quantizer.integer_weight()
        assert int(q.min()) >= -4 and int(q.max()) <= 3, name
        # Every weight the graph now holds is exactly s * q, in the ONNX layout.
        weight = result.values[result.layer(name).weight]
        expected = result.forms[name].onnx_weight(q.float() * quantizer.scale)
        np.testing.assert_array_equal(weight, expected)


def test_the_qdq_graph_keeps_every_node_and_equals_the_simulation(calibrated, images) -> None:
    result, run_dir = calibrated
    original = onnx.load(str(small_cnn_onnx(run_dir)))
    quantized = onnx.load(str(run_dir / "model.onnx"))
    before = {(n.name, n.op_type, tuple(n.output)) for n in original.graph.node}
    after = {(n.name, n.op_type, tuple(n.output)) for n in quantized.graph.node}
    assert before <= after
    added = [op for name, op, _ in after - before]
    assert added == ["DequantizeLinear"] * 4
    names = {init.name for init in quantized.graph.initializer}
    assert not {result.layer(n).weight for n in result.quantizers} & names
    x = images[:16].numpy()
    simulated = ort_run(_with_values(original, result.values), x)
    np.testing.assert_allclose(ort_run(quantized, x), simulated, rtol=1e-5, atol=1e-5)


def test_the_grid_check_passes_and_encodings_use_tensor_names(calibrated) -> None:
    result, run_dir = calibrated
    check = verify_grid(run_dir)
    assert check["passed"] and check["layers"] == 4
    encodings = json.loads((run_dir / "encodings.json").read_text())
    assert set(encodings["param_encodings"]) == {result.layer(n).weight for n in result.quantizers}


def test_bias_correction_matches_the_float_mean_output(calibrated, images) -> None:
    # Per channel, the quantized layer's mean output on x~ equals the float layer's on x:
    # read from onnxruntime (both graphs), not from the code that corrected the bias.
    result, _ = calibrated
    x = images.numpy()
    for name in result.quantizers:
        layer = result.layer(name)
        if layer.bias is None:
            continue
        (quantized,) = result.sampler.run(x, [layer.output], result.values)
        (float_out,) = result.sampler.run(x, [layer.output], result.float_values)
        axes = tuple(i for i in range(quantized.ndim) if i != 1)
        np.testing.assert_allclose(
            quantized.mean(axes, dtype=np.float64),
            float_out.mean(axes, dtype=np.float64),
            atol=1e-4,
        )


def test_resume_restores_every_layer_without_fitting(model_path, images, tmp_path, monkeypatch):
    quant = QuantConfig(weight_bits=4)
    first = adaround_onnx(model_path, images, quant, _config(), CPU, checkpoint=tmp_path)

    def no_fit(*args, **kwargs):
        raise AssertionError("a finished layer was fitted again")

    monkeypatch.setattr(calibrate_module, "fit_layer", no_fit)
    again = adaround_onnx(model_path, images, quant, _config(), CPU, checkpoint=tmp_path)
    for name, quantizer in first.quantizers.items():
        assert torch.equal(quantizer.integer_weight(), again.quantizers[name].integer_weight())
    for tensor, value in first.values.items():
        np.testing.assert_array_equal(value, again.values[tensor])


def test_input_grids_are_exported_as_qdq_and_keyed_by_tensor(model_path, images, tmp_path):
    quant = QuantConfig(weight_bits=4, act_bits=6)
    result = adaround_onnx(model_path, images, quant, _config(), CPU)
    result.save(tmp_path)
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert [n.op_type for n in graph.node].count("QuantizeLinear") == 4
    assert [n.op_type for n in graph.node].count("Clip") == 1 + 4  # ReLU6, and 6-bit ranges
    encodings = json.loads((tmp_path / "encodings.json").read_text())
    inputs = {result.layer(n).input for n in result.quantizers}
    assert set(encodings["activation_encodings"]) == inputs
    assert verify_grid(tmp_path)["activation_grids"] == 4


def test_a_form_that_differs_from_onnxruntime_stays_float(model_path, images, monkeypatch):
    monkeypatch.setattr(calibrate_module, "FORM_TOLERANCE", -1.0)
    result = adaround_onnx(model_path, images, QuantConfig(), _config(), CPU)
    assert not result.quantizers
    assert all("differs from onnxruntime" in why for why in result.left_in_float.values())
    assert len(result.left_in_float) == 4


@pytest.mark.parametrize(
    ("quant", "config", "fragment"),
    [
        (QuantConfig(act_bits=8), _config(act_in_loop=True), "act_in_loop"),
        (QuantConfig(), _config(granularity="block", fisher=True), "fisher=false"),
        (QuantConfig(exclude=["*"]), _config(), "no layer is left to quantize"),
    ],
)
def test_bad_settings(model_path, images, quant, config, fragment) -> None:
    with pytest.raises(UserError, match=fragment):
        adaround_onnx(model_path, images, quant, config, CPU)


def test_inputs_the_graph_cannot_run(model_path) -> None:
    with pytest.raises(UserError, match="onnxruntime cannot run the model on inputs"):
        adaround_onnx(model_path, torch.randn(32, 4, 8, 8), QuantConfig(), _config(), CPU)


def test_onnx_path_writes_int4_tensorrt_and_qnn_forms(model_path, images, tmp_path):
    from adaround_lightning.export import ExportConfig

    int4 = adaround_onnx(model_path, images, QuantConfig(weight_bits=3), _config(), CPU)
    int4.save(tmp_path / "int4", images[:2], ExportConfig(verify=False))
    int4.save(tmp_path / "int8", images[:2], ExportConfig(container="int8", verify=False))
    types = {
        form: {
            i.data_type
            for i in onnx.load(str(tmp_path / form / "model.onnx")).graph.initializer
            if i.name.endswith("_quantized")
        }
        for form in ("int4", "int8")
    }
    assert types == {"int4": {onnx.TensorProto.INT4}, "int8": {onnx.TensorProto.INT8}}
    x = images[:8].numpy()
    a = ort_run(onnx.load(str(tmp_path / "int4" / "model.onnx")), x)
    b = ort_run(onnx.load(str(tmp_path / "int8" / "model.onnx")), x)
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, float(np.abs(b).max()))
    assert verify_grid(tmp_path / "int4")["onnx_containers"] == {"INT4": 4}
    # TensorRT: symmetric int8 input grids, int8 weights, every zero point an int8 0.
    quant = QuantConfig(weight_bits=4, act_bits=8, act_symmetric=True)
    trt = adaround_onnx(model_path, images, quant, _config(), CPU)
    trt.save(tmp_path / "trt", images[:2], ExportConfig(target="tensorrt", verify=False))
    graph = onnx.load(str(tmp_path / "trt" / "model.onnx")).graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    q_dq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(q_dq) == 3 * 4
    for node in q_dq:
        zero_point = values[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any()
    # QNN: encodings keyed by tensors of model.onnx.
    trt.save(tmp_path / "qnn", images[:2], ExportConfig(target="qnn", verify=False))
    document = json.loads((tmp_path / "qnn" / "model_qnn.encodings").read_text())
    graph = onnx.load(str(tmp_path / "qnn" / "model.onnx")).graph
    tensors = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    keys = [e["name"] for e in document["param_encodings"] + document["activation_encodings"]]
    assert len(keys) == 8 and set(keys) <= tensors


def test_onnx_path_group_wise_grids_export_block_wise(model_path, images, tmp_path):
    from adaround_lightning.export import ExportConfig

    quant = QuantConfig(weight_bits=3, group_size=4)
    result = adaround_onnx(model_path, images, quant, _config(), CPU)
    grouped = {n for n, q in result.quantizers.items() if q.group_size is not None}
    assert grouped  # the layers whose channel size 4 divides
    result.save(tmp_path, images[:2], ExportConfig(verify=False))
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    blocks = [a.i for n in graph.node for a in n.attribute if a.name == "block_size"]
    assert len(blocks) == len(grouped) and set(blocks) == {4}
    # The graph runs in onnxruntime to the calibration's own outputs of the quantized weights.
    assert verify_grid(tmp_path)["onnx_containers"] == {"INT4": len(result.quantizers)}
    x = images[:8].numpy()
    written = ort_run(onnx.load(str(tmp_path / "model.onnx")), x)
    assert np.isfinite(written).all()


def test_the_refinement_is_said_to_be_skipped(model_path, images, caplog) -> None:
    # Nothing silent: the ONNX path has no network-level refinement, and says so.
    config = _config(iters=2, refine_bits=[2])
    with caplog.at_level("WARNING", logger="adaround_lightning"):
        result = adaround_onnx(model_path, images, QuantConfig(weight_bits=2), config, CPU)
    assert result.quantizers
    assert "no network-level refinement" in caplog.text

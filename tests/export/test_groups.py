"""Group-wise grids (quant.group_size) through the fit, resume, every export and the grid check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from adaround_lightning import AdaroundConfig, QuantConfig, adaround
from adaround_lightning.core.errors import UserError
from adaround_lightning.export import (
    ExportConfig,
    export_run,
    load_quantized_weights,
    onnx_logits,
    verify_grid,
)
from adaround_lightning.export.export_config import check_target
from adaround_lightning.export.onnx import onnx_weights

QUANT = QuantConfig(weight_bits=3, group_size=4)  # fits the grouped conv (K=4) and fc (K=8)


def _calibrate(model: nn.Module, images: torch.Tensor, checkpoint: Path | None = None):
    return adaround(
        model,
        images,
        QUANT,
        AdaroundConfig(iters=8, batch_size=16, seed=3),
        {"accelerator": "cpu"},
        checkpoint=checkpoint,
    )


def test_group_wise_exports_hold_the_checkpoint_integers(
    tiny_cnn: nn.Module, images: torch.Tensor, tmp_path: Path
) -> None:
    result = _calibrate(tiny_cnn, images)
    grouped = {n for n, q in result.quantizers.items() if q.group_size is not None}
    assert grouped == {"grouped", "fc"}
    export_run(result, tmp_path, images[:2], ExportConfig(target="qnn"))
    layers = {
        layer.name: layer
        for layer in load_quantized_weights(tmp_path / "quantized_weights.safetensors")
    }
    onnx = onnx_weights(tmp_path / "model.onnx")
    for name, quantizer in result.quantizers.items():
        q = quantizer.integer_weight().cpu()
        assert torch.equal(layers[name].q.to(q.dtype), q)  # the checkpoint's integers
        stored = onnx[name].q.reshape(q.shape) if name in grouped else onnx[name].q
        assert np.array_equal(stored.astype(np.int64), q.numpy().astype(np.int64))
        if name in grouped:
            k = q[0].numel()
            assert layers[name].scale.shape == (q.shape[0], k // 4)
            assert onnx[name].block_size == 4 and onnx[name].axis == 1
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = result.model.cpu()(x).numpy()
    got = onnx_logits(tmp_path / "model.onnx", x)
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, float(np.abs(expected).max()))
    check = verify_grid(tmp_path)
    assert check["qnn_weights"] == 4 and check["onnx_containers"] == {"INT4": 4}
    blocks = json.loads((tmp_path / "model_qnn.encodings").read_text())["param_encodings"]
    assert sorted(e.get("block_size", 0) for e in blocks) == [0, 0, 4, 4]
    encodings = json.loads((tmp_path / "encodings.json").read_text())["param_encodings"]
    assert len(encodings["fc.weight"]) == layers["fc"].scale.numel()  # one entry per group


def test_group_wise_fit_resumes_to_the_same_integers(
    tiny_cnn: nn.Module, images: torch.Tensor, tmp_path: Path
) -> None:
    first = _calibrate(tiny_cnn, images, tmp_path)
    again = _calibrate(tiny_cnn, images, tmp_path)  # every layer from its checkpoint
    for name, quantizer in first.quantizers.items():
        assert torch.equal(quantizer.integer_weight(), again.quantizers[name].integer_weight())
        assert torch.equal(quantizer.scale, again.quantizers[name].scale)


def test_group_size_settings_that_cannot_hold_are_refused() -> None:
    with pytest.raises(ValueError, match=r"quant\.per_channel=true"):
        QuantConfig(group_size=8, per_channel=False)
    with pytest.raises(ValueError, match="positive integer"):
        QuantConfig(group_size=0)
    with pytest.raises(UserError, match=r"export\.opset=21"):
        check_target(ExportConfig(opset=20), None, False, 8)
    with pytest.raises(UserError, match=r"quant\.group_size=null"):
        check_target(ExportConfig(target="tensorrt"), None, False, 8)
    check_target(ExportConfig(), None, False, 8)

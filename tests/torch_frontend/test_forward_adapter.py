"""forward_fn: a network called with keywords and a constant extra input, returning a dict."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from adaround_lightning import AdaroundConfig, QuantConfig, adaround
from adaround_lightning.core.errors import UserError
from adaround_lightning.graph.outputs import output_tensors

CPU = {"accelerator": "cpu", "devices": 1}


class _Keyworded(nn.Module):
    """Takes ``pixel_values=`` and a per-channel ``gain``; returns a dict; a root-level BN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)
        self.offset = nn.Parameter(torch.zeros(4))

    def forward(self, *, pixel_values: torch.Tensor, gain: torch.Tensor) -> dict:
        features = torch.relu(self.bn(self.conv(pixel_values * gain)))
        return {"logits": self.head(features.mean((2, 3))) + self.offset, "aux": features}


def _forward(model: nn.Module, x: torch.Tensor) -> dict:
    return model(pixel_values=x, gain=torch.full((1, 3, 1, 1), 0.5))


def test_a_keyword_model_is_calibrated_through_forward_fn() -> None:
    torch.manual_seed(0)
    model = _Keyworded()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    images = torch.randn(32, 3, 8, 8)
    result = adaround(
        model, images, QuantConfig(4), AdaroundConfig(iters=4, batch_size=16), CPU,
        progress=False, forward_fn=_forward,
    )  # fmt: skip
    assert [r.name for r in result.layers] == ["conv", "head"]
    assert result.coverage is not None and result.coverage.fraction == 1.0
    # The model's own names, and the BN folded (its output unchanged in float).
    assert set(result.model.state_dict()) <= set(model.state_dict()) | {"conv.bias"}
    assert not [key for key in result.model.state_dict() if key.startswith("bn.")]
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        folded = output_tensors(result.float_model(x))[0]
        original = _forward(model, x)["logits"]
    torch.testing.assert_close(folded, original, rtol=1e-4, atol=1e-5)
    # The quantized network runs as the user's: its conv holds s * q.
    quantized = copy.deepcopy(result.model)
    assert torch.equal(quantized.conv.weight, result.quantizers["conv"].hard_weight())


def test_forward_fn_is_refused_for_an_onnx_model() -> None:
    with pytest.raises(UserError, match="forward_fn applies to a PyTorch network"):
        adaround("model.onnx", torch.randn(4, 3), forward_fn=_forward)

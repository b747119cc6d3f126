"""Coverage: quantized weight elements counted independently, every float weight named."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torch import nn

from adaround_lightning import AdaroundConfig, QuantConfig, adaround

CPU = {"accelerator": "cpu", "devices": 1}


class _WithAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.unused = nn.Linear(8, 8)  # defined, never called
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x)
        tokens = tokens + self.attention(tokens, tokens, tokens, need_weights=False)[0]
        return self.head(tokens.mean(1))


def test_weights_used_functionally_or_never_are_counted_and_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    torch.manual_seed(0)
    model = _WithAttention().eval()
    with caplog.at_level(logging.WARNING):
        result = adaround(
            model,
            torch.randn(32, 5, 6),
            QuantConfig(weight_bits=4),
            AdaroundConfig(iters=2, batch_size=16),
            CPU,
            progress=False,
        )
    coverage = result.coverage
    assert coverage is not None
    # Independent count: every Linear weight and MultiheadAttention's packed projection.
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    total += model.attention.in_proj_weight.numel()
    quantized = model.embed.weight.numel() + model.head.weight.numel()
    assert set(result.quantizers) == {"embed", "head"}
    assert (coverage.quantized_elements, coverage.total_elements) == (quantized, total)
    assert set(coverage.left_in_float) == {
        "attention.in_proj_weight",
        "attention.out_proj.weight",
        "unused.weight",
    }
    assert "MultiheadAttention" in coverage.left_in_float["attention.in_proj_weight"]
    assert "left in float" in caplog.text and "attention.in_proj_weight" in caplog.text


def test_a_convolutional_network_is_fully_covered() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    result = adaround(
        model,
        torch.randn(16, 3, 32, 32),
        QuantConfig(weight_bits=4),
        AdaroundConfig(iters=1, batch_size=8),
        CPU,
        progress=False,
    )
    assert result.coverage is not None and result.coverage.fraction == 1.0
    assert result.coverage.left_in_float == {}

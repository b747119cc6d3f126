"""Coverage: quantized weight elements counted independently, every float weight named."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from adaround_lightning import AdaroundConfig, QuantConfig, adaround

CPU = {"accelerator": "cpu", "devices": 1}


class _WithAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.gate = nn.Linear(8, 8)  # its weight is passed to F.linear by this module's forward
        self.mixer = nn.Parameter(torch.randn(8, 8) / 8)  # a bare parameter passed to F.linear
        self.unused = nn.Linear(8, 8)  # defined, never called
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x)
        tokens = tokens + self.attention(tokens, tokens, tokens, need_weights=False)[0]
        tokens = tokens * torch.sigmoid(F.linear(tokens, self.gate.weight, self.gate.bias))
        tokens = F.linear(tokens, self.mixer)
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
    # Counted independently on the user's model: every Linear weight, MultiheadAttention's
    # packed projection and the bare parameter passed to F.linear.
    linears = [m for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    total = sum(m.weight.numel() for m in linears) + model.attention.in_proj_weight.numel()
    total += model.mixer.numel()
    float_elements = model.unused.weight.numel() + model.mixer.numel()
    # The attention's four projections and the routed gate are quantized like any Linear.
    assert set(result.quantizers) == {
        "embed",
        "attention.q_proj",
        "attention.k_proj",
        "attention.v_proj",
        "attention.out_proj",
        "gate",
        "head",
    }
    assert (coverage.quantized_elements, coverage.total_elements) == (
        total - float_elements,
        total,
    )
    assert set(coverage.left_in_float) == {"mixer", "unused.weight"}
    assert "bare parameter" in coverage.left_in_float["mixer"]
    assert "left in float" in caplog.text and "mixer" in caplog.text


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


#: The torchvision zoo at a small input (random init): (builder kwargs, input size).
_ZOO = {
    "vit_b_16": ({"image_size": 32}, 32),
    "swin_t": ({}, 32),
    "convnext_tiny": ({}, 32),
    "maxvit_t": ({}, 224),  # its partitions need 224 px
    "densenet121": ({}, 32),
    "resnet50": ({}, 32),
    "mobilenet_v3_large": ({}, 32),
    "efficientnet_b0": ({}, 32),
}


@pytest.mark.parametrize("name", sorted(_ZOO))
def test_every_weight_of_the_zoo_is_planned_and_its_blocks_are_found(name: str) -> None:
    from adaround_lightning.engine.records.coverage import weight_coverage
    from adaround_lightning.torch_frontend.networks import float_and_quantized
    from adaround_lightning.torch_frontend.plan import plan_calibration

    torch.manual_seed(0)
    kwargs, size = _ZOO[name]
    model = torchvision.models.get_model(name, **kwargs).eval()
    example = torch.randn(2, 3, size, size)
    fp_model, _ = float_and_quantized(model, example)
    plan = plan_calibration(fp_model, example, QuantConfig(weight_bits=4))
    coverage = weight_coverage(fp_model, list(plan.bits), plan.skipped, plan.functional)
    # Independent count on the untouched model: every Conv/Linear weight and packed attention
    # projection; the rewritten network must quantize exactly that many elements.
    expected = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ) + sum(
        m.in_proj_weight.numel() for m in model.modules() if isinstance(m, nn.MultiheadAttention)
    )
    assert coverage.left_in_float == {}
    assert coverage.quantized_elements == coverage.total_elements == expected
    # Every layer is fitted in a block of several layers, except stems, transitions and heads.
    in_blocks = sum(len(b.layers) for b in plan.trace.blocks if len(b.layers) > 1)
    assert in_blocks / len(plan.trace.layers) > 0.75

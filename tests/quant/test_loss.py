"""AdaptiveRoundingLoss against the paper's formulas (eq. 24, 25), recomputed in float64."""

from __future__ import annotations

import math

import pytest
import torch

from adaround_lightning.quant.loss import AdaptiveRoundingLoss


def _paper_beta(t: int, max_iter: int, warm: float, start: float = 20, end: float = 2) -> float:
    warm_end = warm * max_iter
    rel = (t - warm_end) / (max_iter - warm_end)
    return end + 0.5 * (start - end) * (1 + math.cos(rel * math.pi))


def _paper_reg(V: torch.Tensor, beta: float) -> float:
    V = V.double()
    h = torch.clamp(torch.sigmoid(V) * 1.2 - 0.1, 0, 1)
    return float((1 - (2 * h - 1).abs() ** beta).sum())


@pytest.mark.parametrize("max_iter,warm", [(100, 0.2), (1000, 0.2), (37, 0.5), (10, 0.0)])
def test_schedule_at_boundaries(max_iter: int, warm: float) -> None:
    loss = AdaptiveRoundingLoss(max_iter=max_iter, warm_start=warm)
    V = torch.randn(50, generator=torch.Generator().manual_seed(max_iter))
    out = torch.randn(8, 5)
    warm_end = math.ceil(warm * max_iter)
    for t in range(0, warm_end):
        reg, _ = loss(out, out, V, t)
        assert float(reg) == 0.0
    # First regularized step: beta is the start value (20) when warm*max_iter is an integer.
    reg, _ = loss(out, out, V, warm_end)
    assert loss.beta(warm_end) == pytest.approx(_paper_beta(warm_end, max_iter, warm))
    assert float(reg) == pytest.approx(
        0.01 * _paper_reg(V, _paper_beta(warm_end, max_iter, warm)), rel=1e-5
    )
    last = max_iter - 1
    reg, _ = loss(out, out, V, last)
    assert loss.beta(last) == pytest.approx(_paper_beta(last, max_iter, warm))
    assert float(reg) == pytest.approx(
        0.01 * _paper_reg(V, _paper_beta(last, max_iter, warm)), rel=1e-5
    )
    betas, weights = loss.schedule(dtype=torch.float64)
    assert betas[warm_end] == pytest.approx(_paper_beta(warm_end, max_iter, warm))
    assert torch.all(weights[:warm_end] == 0) and torch.all(weights[warm_end:] == 0.01)
    assert betas[warm_end:].diff().le(0).all()  # annealed downwards


def test_beta_starts_at_20_and_approaches_2() -> None:
    loss = AdaptiveRoundingLoss(max_iter=10000)
    assert loss.beta(2000) == pytest.approx(20.0)
    assert loss.beta(9999) == pytest.approx(2.0, abs=1e-3)


def test_reconstruction_conventions() -> None:
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(4, 6, 3, 3, generator=g), torch.randn(4, 6, 3, 3, generator=g)
    paper = AdaptiveRoundingLoss(max_iter=10)
    mean = AdaptiveRoundingLoss(max_iter=10, reconstruction="mean")
    d = (a.double() - b.double()) ** 2
    assert float(paper.reconstruction_loss(a, b)) == pytest.approx(float(d.sum(1).mean()), rel=1e-5)
    assert float(mean.reconstruction_loss(a, b)) == pytest.approx(float(d.mean()), rel=1e-5)
    assert paper.reg_param == 0.01 and mean.reg_param == 0.001


def test_results_follow_input_dtype() -> None:
    loss = AdaptiveRoundingLoss(max_iter=10)
    out = torch.randn(2, 3, dtype=torch.float64)
    reg, rec = loss(out, out, torch.randn(3, dtype=torch.float64), 0)
    assert reg.dtype == rec.dtype == torch.float64
    reg, rec = loss(out, out, torch.randn(3, dtype=torch.float64), 9)
    assert reg.dtype == torch.float64


@pytest.mark.parametrize("curr_iter", [10, 11, -1])
def test_iter_out_of_range(curr_iter: int) -> None:
    loss = AdaptiveRoundingLoss(max_iter=10)
    with pytest.raises(ValueError, match="curr_iter"):
        loss(torch.ones(1, 1), torch.ones(1, 1), torch.ones(1), curr_iter)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_iter": 0},
        {"max_iter": 10, "warm_start": 1.0},
        {"max_iter": 10, "beta_range": (0, 2)},
        {"max_iter": 10, "reconstruction": "sum"},
        {"max_iter": 10, "reg_param": -1.0},
    ],
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AdaptiveRoundingLoss(**kwargs)


def test_the_paper_convention_sums_over_a_linears_last_axis_on_token_outputs() -> None:
    # (N, L, C) = (3, 5, 4): summing over dim 1 would sum the 5 tokens, not the 4 channels.
    generator = torch.Generator().manual_seed(11)
    soft, target = (
        torch.randn(3, 5, 4, generator=generator),
        torch.randn(3, 5, 4, generator=generator),
    )
    loss = AdaptiveRoundingLoss(max_iter=10, reconstruction="paper")
    squared = (soft.double() - target.double()) ** 2
    per_token = sum(squared[n, t].sum() for n in range(3) for t in range(5)) / 15
    assert math.isclose(
        float(loss.reconstruction_loss(soft, target, -1)), float(per_token), rel_tol=1e-6
    )
    per_image_and_channel = squared.sum(1).mean()
    assert math.isclose(
        float(loss.reconstruction_loss(soft, target)), float(per_image_and_channel), rel_tol=1e-6
    )


def test_fits_reconstruct_over_the_channels_of_what_they_fit() -> None:
    from torch import nn

    from adaround_lightning.engine.fit.reconstruction import (
        BlockReconstruction,
        LayerReconstruction,
    )
    from adaround_lightning.quant.factory import quantizer_for_weight

    def quantizer(layer: nn.Module):
        return quantizer_for_weight(layer.weight, 4, True, "minmax")

    loss = AdaptiveRoundingLoss(max_iter=4)
    linear, conv = nn.Linear(4, 4), nn.Conv2d(3, 4, 1)
    assert LayerReconstruction(linear, quantizer(linear), loss).channel_dim == -1
    assert LayerReconstruction(conv, quantizer(conv), loss).channel_dim == 1
    mlp = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))
    quantizers = {"0": quantizer(mlp[0]), "2": quantizer(mlp[2])}
    block = BlockReconstruction(mlp, quantizers, loss)
    # A transformer block's (N, L, C) output, and one permuted back to (N, C, H, W) after its
    # last Linear (ConvNeXt's CNBlock, MaxViT's attention): the axis of size C.
    assert block.output_channel_dim(torch.Size([5, 7, 4])) == -1
    assert block.output_channel_dim(torch.Size([5, 4, 3, 3])) == 1
    cnn = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 1))
    block = BlockReconstruction(cnn, {"0": quantizer(cnn[0]), "2": quantizer(cnn[2])}, loss)
    assert block.output_channel_dim(torch.Size([5, 6, 6, 6])) == 1

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

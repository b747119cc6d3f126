"""The fused soft weight and regularizer against the paper's formulas under autograd."""

from __future__ import annotations

import pytest
import torch

from adaround_lightning.quant.factory import quantizer_for_weight
from adaround_lightning.quant.soft_rounding import soft_weight_and_regularizer

ZETA, GAMMA = 1.1, -0.1  # eq. (23), written here independently of the package


def _reference(V, floor, scale, qmin, qmax, beta):  # type: ignore[no-untyped-def]
    """Eqs. (22)-(24) in float64 autograd ops."""
    h = torch.clamp(torch.sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)
    weight = torch.clamp(floor + h, qmin, qmax) * scale
    regularizer = (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()
    return weight, regularizer


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("shape", "per_channel"), [((6, 5, 3, 3), True), ((7, 9), False)])
@pytest.mark.parametrize("beta", [20.0, 7.5, 2.0, None])
def test_values_and_gradients_match_autograd(seed, shape, per_channel, beta) -> None:  # type: ignore[no-untyped-def]
    generator = torch.Generator().manual_seed(seed)
    quantizer = quantizer_for_weight(
        torch.randn(shape, generator=generator), 3, per_channel, "minmax"
    )
    with torch.no_grad():
        # Fresh V: interior values, deep in both clips of h, and h = 1/2.
        V = torch.randn(shape, generator=generator) * 3
        V.view(-1)[:4] = torch.tensor([-30.0, 30.0, 0.0, 0.0])
        quantizer.V.copy_(V)
    grad_weight = torch.randn(shape, generator=generator)
    grad_regularizer = torch.rand((), generator=generator)

    weight, regularizer = soft_weight_and_regularizer(quantizer, beta)
    (weight * grad_weight).sum().add(regularizer * grad_regularizer).backward()

    V64 = quantizer.V.detach().double().requires_grad_(True)
    floor, scale = quantizer.weight_floor.double(), quantizer.scale.double()
    ref_weight, ref_regularizer = _reference(
        V64, floor, scale, quantizer.quant_min, quantizer.quant_max, beta or 1.0
    )
    ref_loss = (ref_weight * grad_weight.double()).sum()
    if beta is not None:
        ref_loss = ref_loss + ref_regularizer * grad_regularizer.double()
    ref_loss.backward()

    torch.testing.assert_close(weight.double(), ref_weight, rtol=1e-6, atol=1e-6)
    if beta is None:
        assert float(regularizer.detach()) == 0.0
    else:
        torch.testing.assert_close(regularizer.double(), ref_regularizer, rtol=1e-5, atol=1e-4)
    assert quantizer.V.grad is not None
    torch.testing.assert_close(quantizer.V.grad.double(), V64.grad, rtol=1e-5, atol=1e-6)


def test_no_gradient_where_h_sits_on_its_bounds() -> None:
    # An element whose weight lies on the grid starts at h = 0 exactly: no gradient, as
    # torch.clamp gives none at its bounds (the early stop of a fit relies on it).
    quantizer = quantizer_for_weight(torch.tensor([[1.0, -1.0, 0.3]]), 3, True, "minmax")
    weight, regularizer = soft_weight_and_regularizer(quantizer, 2.0)
    (weight.sum() + regularizer).backward()
    assert quantizer.V.grad is not None
    assert quantizer.V.grad[0, :2].eq(0).all() and quantizer.V.grad[0, 2] != 0


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("symmetric", [True, False])
def test_straight_through_forwards_the_hard_rounding_with_the_soft_gradient(
    seed: int, symmetric: bool
) -> None:
    # Value: s (clip(floor(W/s) + z + 1[h(V) >= 1/2]) - z), the integers the fit ends with;
    # gradient: that of the soft weight of eq. (22), both recomputed in float64.
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(6, 16, generator=generator)
    quantizer = quantizer_for_weight(weight, 3, True, "minmax", 8, symmetric)
    with torch.no_grad():
        quantizer.V.copy_(torch.randn(6, 16, generator=generator) * 3)
    grad_weight = torch.randn(6, 16, generator=generator)
    hard, regularizer = soft_weight_and_regularizer(quantizer, None, hard=True)
    (hard * grad_weight).sum().backward()

    V64 = quantizer.V.detach().double().requires_grad_(True)
    scale = quantizer.scale.double()
    zero = quantizer.zero_point.double()
    floor = quantizer.weight_floor.double()  # floor(W/s) + z, as stored (W/s on an integer)
    h = torch.clamp(torch.sigmoid(V64) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)
    up = (h >= 0.5).double()
    expected = (torch.clamp(floor + up, quantizer.quant_min, quantizer.quant_max) - zero) * scale
    torch.testing.assert_close(hard.double(), expected, rtol=1e-6, atol=1e-6)
    assert float(regularizer) == 0.0
    soft = (torch.clamp(floor + h, quantizer.quant_min, quantizer.quant_max) - zero) * scale
    (soft * grad_weight.double()).sum().backward()
    torch.testing.assert_close(quantizer.V.grad.double(), V64.grad, rtol=1e-5, atol=1e-6)

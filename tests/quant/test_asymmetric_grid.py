"""Asymmetric (zero-point) weight grids: properties against float64 recomputations."""

from __future__ import annotations

import pytest
import torch

from adaround_lightning.quant.factory import quantizer_for_weight
from adaround_lightning.quant.grids import asymmetric_scale
from adaround_lightning.quant.quant_config import QuantConfig
from adaround_lightning.quant.quantizer import rectified_sigmoid


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_minmax_grid_spans_each_row_and_holds_zero(bits: int) -> None:
    generator = torch.Generator().manual_seed(bits)
    rows = torch.randn(6, 40, generator=generator, dtype=torch.float64) + 0.7  # skewed rows
    q_min, q_max = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale, zero = asymmetric_scale(rows, q_min, q_max, "minmax")
    low, high = rows.amin(1).clamp(max=0), rows.amax(1).clamp(min=0)
    scale64 = (high - low) / (2**bits - 1)
    assert torch.allclose(scale.double(), scale64, rtol=1e-6)
    assert bool(((zero >= q_min) & (zero <= q_max)).all())
    # Dequantizing the stored integers q = clip(round(w/s) + z): every weight within s/2 of its
    # grid point (nothing clipped beyond rounding), and w = 0 exactly representable.
    q = (torch.round(rows / scale64[:, None]) + zero.double()[:, None]).clamp(q_min, q_max)
    dequant = (q - zero.double()[:, None]) * scale64[:, None]
    assert bool(((dequant - rows).abs() <= scale64[:, None] / 2 + 1e-6).all())
    assert torch.equal(
        ((zero.double() - zero.double()) * scale64), torch.zeros(6, dtype=torch.float64)
    )


def test_mse_grid_is_never_worse_than_minmax() -> None:
    rows = torch.randn(8, 128, generator=torch.Generator().manual_seed(1)) ** 3  # heavy tails

    def error(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        s, z = scale.double()[:, None], zero.double()[:, None]
        q = (torch.round(rows.double() / s) + z).clamp(-8, 7)
        return ((q - z) * s - rows.double()).square().sum(1)

    mse, minmax = asymmetric_scale(rows, -8, 7, "mse"), asymmetric_scale(rows, -8, 7, "minmax")
    assert bool((error(*mse) <= error(*minmax) + 1e-9).all())


@pytest.mark.parametrize("group_size", [None, 16])
def test_asymmetric_quantizer_weight_equals_float64_formula(group_size: int | None) -> None:
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(5, 32, generator=generator) * 0.1 + 0.05
    fq = quantizer_for_weight(weight, 3, True, "minmax", group_size, symmetric=False)
    assert not fq.is_symmetric and fq.dequant_offset is not None
    # Recompute from the per-group (or per-channel) scale and zero point in float64.
    groups = group_size or 32
    rows = weight.double().reshape(-1, groups)
    scale = fq.scale.double().expand(weight.shape).reshape(-1, groups)[:, :1]
    zero = fq.zero_point.double().expand(weight.shape).reshape(-1, groups)[:, :1]
    V = torch.randn(fq.V.shape, generator=generator)
    fq.V.data.copy_(V)
    h = rectified_sigmoid(V.double()).reshape(-1, groups)
    q = (torch.floor(rows / scale) + zero + h).clamp(-4, 3)
    expected = ((q - zero) * scale).reshape(weight.shape)
    assert torch.allclose(fq(weight).double(), expected, atol=1e-6)
    hard = (torch.floor(rows / scale) + zero + (V.reshape(-1, groups) >= 0)).clamp(-4, 3)
    assert torch.equal(fq.integer_weight().double(), hard.reshape(weight.shape))
    assert torch.allclose(
        fq.hard_weight().double(), ((hard - zero) * scale).reshape(5, 32), atol=1e-6
    )


def test_asymmetric_state_dict_round_trip_keeps_the_offset() -> None:
    weight = torch.randn(4, 16, generator=torch.Generator().manual_seed(4)) + 0.5
    fq = quantizer_for_weight(weight, 4, True, "mse", 8, symmetric=False)
    fresh = quantizer_for_weight(torch.zeros(4, 16), 4, True, "minmax", 8)
    fresh.group_size = 8
    fresh.load_state_dict(fq.state_dict())
    assert torch.equal(fresh.hard_weight(), fq.hard_weight())


def test_asymmetric_grids_refuse_symmetric_scale_methods() -> None:
    with pytest.raises(ValueError, match="weight_symmetric=false use auto, minmax or mse"):
        QuantConfig(weight_symmetric=False, scale_method="half")

"""Grid scales against their formulas; the MSE search finds the best clipping ratio."""

from __future__ import annotations

import pytest
import torch

from adaround_lightning.quant.grids import weight_scale
from adaround_lightning.quant.quant_config import QuantConfig


def _error(w: torch.Tensor, s: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    w = w.double().flatten(1)
    s = s.double()[:, None]
    return (w - torch.clamp(torch.round(w / s), qmin, qmax) * s).pow(2).sum(1)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_scale_formulas(bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(6, 4, 3, 3, generator=g)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    m = w.abs().flatten(1).amax(1).double()
    expected = {"maxabs": m / qmax, "half": m / (qmax + 0.5), "full": m / 2 ** (bits - 1)}
    for method, reference in expected.items():
        assert torch.allclose(weight_scale(w, qmin, qmax, True, method).double(), reference)
    per_tensor = weight_scale(w, qmin, qmax, False, "half")
    assert per_tensor.shape == (1,) and float(per_tensor) == pytest.approx(
        float(m.max()) / (qmax + 0.5)
    )


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("per_channel", [True, False])
def test_mse_search_is_no_worse_than_any_coarse_candidate(bits: int, per_channel: bool) -> None:
    g = torch.Generator().manual_seed(10 + bits)
    w = torch.randn(5, 64, generator=g) * torch.rand(5, 1, generator=g)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    flat = w if per_channel else w.reshape(1, -1)
    best = weight_scale(w, qmin, qmax, per_channel, "mse")
    m = flat.abs().amax(1)
    alpha = best / (m / qmax)
    # The documented range: alpha down to 0.5 at 2 bits, to 0.1 above.
    low = 0.5 if bits == 2 else 0.1
    assert (alpha >= low - 1e-6).all() and (alpha <= 1.0 + 1e-6).all()
    # The documented search, recomputed in float64: the coarse ratios low, low + 0.025, ..., 1,
    # then the 0.005 neighbours of the result (a local minimum of the fine grid).
    coarse = [a * m / qmax for a in torch.arange(low, 1.0 + 1e-9, 0.025)]
    errors = torch.stack([_error(flat, c, qmin, qmax) for c in coarse])
    found = _error(flat, best, qmin, qmax)
    assert (found <= errors.min(0).values * (1 + 1e-5)).all()
    for step in (-0.005, 0.005):
        neighbour = ((alpha + step).clamp(low, 1.0) * m / qmax).float()
        assert (found <= _error(flat, neighbour, qmin, qmax) * (1 + 1e-5)).all()
    assert (found <= _error(flat, m / qmax, qmin, qmax) + 1e-9).all()


def test_unknown_method_is_rejected() -> None:
    with pytest.raises(ValueError, match="scale_method"):
        QuantConfig(scale_method="percentile")


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("per_channel", [True, False])
def test_minmax_is_the_finest_grid_that_clips_nothing(bits: int, per_channel: bool) -> None:
    g = torch.Generator().manual_seed(20 + bits)
    w = torch.randn(7, 3, 3, 3, generator=g) + 0.3 * torch.randn(7, 1, 1, 1, generator=g)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    s = weight_scale(w, qmin, qmax, per_channel, "minmax").double()
    flat = w.double().flatten(1) if per_channel else w.double().reshape(1, -1)
    ratio = flat / s[:, None]
    # Nothing outside [q_min, q_max] (float64 recomputation), and one end lands exactly on it:
    # a smaller scale would clip.
    assert ratio.min() >= qmin - 1e-5 and ratio.max() <= qmax + 1e-5  # float32 scale
    at_edge = torch.isclose(
        ratio.amax(1), torch.tensor(float(qmax), dtype=torch.float64)
    ) | torch.isclose(ratio.amin(1), torch.tensor(float(qmin), dtype=torch.float64))
    assert at_edge.all()
    assert (s <= weight_scale(w, qmin, qmax, per_channel, "maxabs").double() + 1e-12).all()


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_auto_is_the_mse_search_and_uses_all_four_levels_at_two_bits(bits: int) -> None:
    g = torch.Generator().manual_seed(30 + bits)
    w = torch.randn(5, 16, generator=g)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    auto = weight_scale(w, qmin, qmax, True, "auto")
    assert torch.equal(auto, weight_scale(w, qmin, qmax, True, "mse"))
    if bits == 2:
        # Between full (max|W| / 2: all four levels inside the range) and maxabs (max|W|).
        m = w.abs().amax(1).double()
        assert (auto.double() >= m / 2 * (1 - 1e-6)).all() and (auto.double() <= m + 1e-6).all()


@pytest.mark.parametrize(("bits", "group_size", "shape"), [(3, 4, (6, 16)), (2, 8, (5, 4, 2, 2))])
def test_group_wise_grid_is_exact_in_float64(bits: int, group_size: int, shape: tuple) -> None:
    from adaround_lightning.export.integers import quantized_layers
    from adaround_lightning.quant.factory import quantizer_for_weight

    g = torch.Generator().manual_seed(31 + bits)
    weight = torch.randn(*shape, generator=g) * torch.rand(shape[0], *[1] * (len(shape) - 1))
    fq = quantizer_for_weight(weight, bits, True, "maxabs", group_size)
    fq.V.data = torch.randn(fq.V.shape, generator=g)  # any learned rounding
    (layer,) = quantized_layers({"w": fq})
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    # One scale per group of G consecutive elements of a channel: maxabs in float64.
    groups = weight.double().reshape(shape[0], -1, group_size)
    expected_scale = groups.abs().amax(-1) / qmax  # (C_out, K / G)
    assert layer.group_size == group_size and layer.scale.shape == expected_scale.shape
    assert torch.allclose(layer.scale.double(), expected_scale, rtol=1e-6)
    # The integers are the paper's clamp(floor(W/s) + 1[V >= 0]) with each group's own scale.
    s = layer.scale.double().repeat_interleave(group_size, 1).reshape(shape)
    ratio = weight.double() / s
    q = torch.clamp(torch.floor(ratio) + (fq.V.detach() >= 0).double(), qmin, qmax)
    near_integer = (ratio - ratio.round()).abs() < 1e-6
    assert not ((layer.q.double() != q) & ~near_integer).any()
    # The quantized weight is exactly s * q, and every group shares one scale.
    assert torch.equal(layer.broadcast_scale(), fq.scale.float().cpu())
    assert (layer.scale.repeat_interleave(group_size, 1) == s.float().reshape(shape[0], -1)).all()


def test_group_wise_mse_grid_is_no_worse_than_maxabs_per_group() -> None:
    from adaround_lightning.quant.grids import group_scale

    g = torch.Generator().manual_seed(5)
    weight = torch.randn(8, 64, generator=g)
    mse, maxabs = (group_scale(weight, -4, 3, 16, m).double() for m in ("mse", "maxabs"))

    def error(scale: torch.Tensor) -> torch.Tensor:  # float64 round-to-nearest error per group
        s = scale.repeat_interleave(16, 1)
        w = weight.double()
        return ((torch.clamp(torch.round(w / s), -4, 3) * s - w) ** 2).reshape(8, 4, 16).sum(-1)

    assert torch.all(error(mse) <= error(maxabs) + 1e-12)

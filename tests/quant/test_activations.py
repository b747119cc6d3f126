"""Activation quantization: the grid against its formula, observers, QDrop, hooks, the walk."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from adaround_lightning import AdaroundConfig, QuantConfig, adaround
from adaround_lightning.quant.activations import (
    ActivationQuantizer,
    attach_input_quantizers,
    calibrate_input_quantizers,
    detach_input_quantizers,
    input_quantizers_of,
)


def _reference(x: torch.Tensor, low: float, high: float, bits: int) -> tuple[torch.Tensor, float]:
    """The asymmetric grid in float64, from the formulas in the module docstring."""
    low, high = min(low, 0.0), max(high, 0.0)
    qmax = 2**bits - 1
    scale = (high - low) / qmax
    zero = min(max(round(-low / scale), 0), qmax)
    q = torch.clamp(torch.round(x.double() / scale) + zero, 0, qmax)
    return scale * (q - zero), scale


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_fake_quant_matches_the_float64_formula(bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(4096, generator=g) * 3
    low, high = float(torch.rand(1, generator=g)) * -2, float(torch.rand(1, generator=g)) * 4
    aq = ActivationQuantizer(bits)
    aq.set_range(low, high)
    expected, scale = _reference(x, low, high, bits)
    got = aq(x).double()
    off = (got - expected).abs()
    # Elements within float32 rounding of a half step may round the other way: one step at most.
    assert (off <= 1e-5).float().mean() >= 0.999
    assert torch.all((off <= 1e-5) | ((off - scale).abs() <= 1e-5))
    assert float(aq(torch.zeros(3)).abs().max()) == 0.0  # zero padding stays exact
    assert len(torch.unique(got)) <= 2**bits


def test_minmax_range_covers_every_observed_value() -> None:
    g = torch.Generator().manual_seed(0)
    aq = ActivationQuantizer(8)
    batches = [torch.randn(16, 8, generator=g) * (i + 1) - 0.5 for i in range(4)]
    for batch in batches:
        aq.observe(batch)
    aq.calibrate("minmax")
    data = torch.cat(batches)
    assert float((aq(data) - data).abs().max()) <= float(aq.scale) / 2 + 1e-6
    # The integer zero point moves the range by at most half a step.
    low, high = aq.integer_range()
    half = float(aq.scale) / 2 + 1e-6
    assert low <= float(data.min()) + half and high >= float(data.max()) - half


def test_mse_observer_beats_minmax_on_heavy_tails() -> None:
    g = torch.Generator().manual_seed(1)
    data = torch.distributions.StudentT(2.0).sample((20000,)).abs()
    errors = {}
    for method in ("minmax", "mse"):
        aq = ActivationQuantizer(4)
        for chunk in data.split(5000):
            aq.observe(chunk)
        aq.calibrate(method)
        errors[method] = float((aq(data) - data).double().pow(2).mean())
    del g
    assert errors["mse"] < errors["minmax"]


def test_drop_prob_keeps_that_fraction_in_float() -> None:
    torch.manual_seed(3)
    aq = ActivationQuantizer(2)
    aq.set_range(0.0, 1.0)
    x = torch.rand(100000) * 0.9 + 0.05
    quantized = aq(x)
    aq.drop_prob = 0.3
    mixed = aq(x)
    kept_float = (mixed == x) & (quantized != x)
    changed = quantized != x
    assert float(kept_float.sum() / changed.sum()) == pytest.approx(0.3, abs=0.01)
    assert torch.all((mixed == x) | (mixed == quantized))


def test_hooks_quantize_layer_inputs_and_leave_the_state_dict_alone() -> None:
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    plain_keys = set(net.state_dict())
    x = torch.randn(64, 6)
    quantizers = calibrate_input_quantizers(net, ["0", "2"], x, bits=4)
    assert set(input_quantizers_of(net)) == {"0", "2"}
    assert set(net.state_dict()) == plain_keys  # loadable into the plain architecture
    with torch.no_grad():
        manual = net[2](quantizers["2"](net[1](net[0](quantizers["0"](x)))))
        assert torch.equal(net(x), manual)
        assert torch.equal(copy.deepcopy(net)(x), manual)  # copies keep their own hooks
    detach_input_quantizers(net)
    assert not input_quantizers_of(net)
    with torch.no_grad():
        assert torch.equal(net(x), net[2](net[1](net[0](x))))


def test_bad_activation_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="act_bits"):
        QuantConfig(act_bits=9)
    with pytest.raises(ValueError, match="act_observer"):
        QuantConfig(act_bits=8, act_observer="percentile")
    with pytest.raises(ValueError, match="drop_prob"):
        AdaroundConfig(drop_prob=1.0)
    with pytest.raises(ValueError, match="block_iters"):
        AdaroundConfig(block_iters=0)


@pytest.mark.parametrize(
    ("in_loop", "granularity"), [(False, "layer"), (True, "layer"), (True, "block")]
)
def test_walk_attaches_a_calibrated_quantizer_to_every_layer(
    tiny_cnn: nn.Module, images: torch.Tensor, in_loop: bool, granularity: str
) -> None:
    result = adaround(
        tiny_cnn,
        images,
        QuantConfig(weight_bits=4, act_bits=4),
        AdaroundConfig(iters=8, batch_size=16, act_in_loop=in_loop, granularity=granularity),
        {"accelerator": "cpu"},
        progress=False,
    )
    attached = input_quantizers_of(result.model)
    assert set(attached) == set(result.quantizers) == set(result.act_quantizers)
    assert all(q.calibrated and q.drop_prob == 0.0 and q.bits == 4 for q in attached.values())
    # Every layer input of the quantized network is on its grid: 2**4 levels at most.
    seen: dict[str, torch.Tensor] = {}
    handles = [
        result.model.get_submodule(name).register_forward_pre_hook(
            lambda _m, args, name=name: seen.__setitem__(name, args[0])
        )
        for name in attached
    ]
    with torch.no_grad():
        result.model(images[:8])
    for handle in handles:
        handle.remove()
    for name, x in seen.items():
        q = torch.round(x / attached[name].scale) + attached[name].zero_point
        assert torch.allclose(x, (q - attached[name].zero_point) * attached[name].scale, atol=1e-5)
        assert len(torch.unique(q)) <= 16
    # The round-to-nearest model carries the same activation grids.
    assert set(input_quantizers_of(result.nearest_model())) == set(attached)


@pytest.mark.parametrize(("budget", "block_steps"), [("fit", 6), ("layer", 12)])
def test_block_fit_takes_its_step_budget(
    images: torch.Tensor, budget: str, block_steps: int
) -> None:
    from torchvision.models.resnet import BasicBlock

    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), BasicBlock(8, 8), nn.Flatten(), nn.Linear(8 * 64, 4)
    ).eval()
    config = AdaroundConfig(
        iters=6, batch_size=16, granularity="block", block_budget=budget, stop_when_binary=False
    )
    result = adaround(
        model, images, QuantConfig(weight_bits=4), config, {"accelerator": "cpu"}, progress=False
    )
    # The block's two convs are fitted together for 6 steps (budget fit) or 2 x 6 (budget
    # layer); the others for 6 each. A loss curve this short has one row per step.
    steps = {report.name: len(report.loss_curve) for report in result.layers}
    assert steps == {"0": 6, "1.conv1": block_steps, "1.conv2": block_steps, "3": 6}


def test_attach_replaces_an_existing_quantizer() -> None:
    net = nn.Sequential(nn.Linear(2, 2)).eval()
    first, second = ActivationQuantizer(8), ActivationQuantizer(2)
    first.set_range(0.0, 1.0)
    second.set_range(0.0, 1.0)
    attach_input_quantizers(net, {"0": first})
    attach_input_quantizers(net, {"0": second})
    assert input_quantizers_of(net)["0"] is second
    assert len(net[0]._forward_pre_hooks) == 1


def test_the_mse_observer_samples_every_pixel_position_not_one() -> None:
    # (64, 128, 8, 8): a stride of numel // 8192 = 64 = H * W would hit pixel (0, 0) only.
    from adaround_lightning.quant.activations import ActivationQuantizer

    position = torch.arange(64.0).reshape(1, 1, 8, 8)
    x = position.expand(64, 128, 8, 8).contiguous()
    first, second = ActivationQuantizer(8), ActivationQuantizer(8)
    first.observe(x)
    second.observe(x)
    seen = first.samples[0]
    assert torch.equal(seen, second.samples[0])  # seeded: reproducible
    assert len(seen.unique()) == 64  # every pixel position is represented
    # and about uniformly: each position holds 1/64 of the draws, within a loose bound.
    counts = torch.bincount(seen.long(), minlength=64).float()
    assert counts.min() > 0.5 * counts.mean() and counts.max() < 1.5 * counts.mean()


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_symmetric_grid_matches_the_float64_formula(bits: int) -> None:
    g = torch.Generator().manual_seed(100 + bits)
    x = torch.randn(4096, generator=g) * 3
    low, high = float(torch.rand(1, generator=g)) * -4, float(torch.rand(1, generator=g)) * 4
    aq = ActivationQuantizer(bits, symmetric=True)
    aq.set_range(low, high)
    qmax = 2 ** (bits - 1) - 1
    scale = max(-low, high) / qmax  # the module docstring's formula, in float64
    expected = scale * torch.clamp(torch.round(x.double() / scale), -qmax - 1, qmax)
    assert int(aq.zero_point) == 0 and (aq.quant_min, aq.quant_max) == (-qmax - 1, qmax)
    assert float(aq.scale) == pytest.approx(scale, rel=1e-6)
    off = (aq(x).double() - expected).abs()
    assert (off <= 1e-5).float().mean() >= 0.999
    assert torch.all((off <= 1e-5) | ((off - scale).abs() <= 1e-5))
    assert float(aq(torch.zeros(3)).abs().max()) == 0.0

"""The network-level refinement's pieces against independent float64 recomputations."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from adaround_lightning.engine.adaround_config import AdaroundConfig
from adaround_lightning.engine.fit.fit_step import FitSettings, fit_network
from adaround_lightning.engine.fit.network_refinement import (
    NetworkRefinement,
    output_divergence,
    start_V,
)
from adaround_lightning.engine.progress import CalibrationProgress
from adaround_lightning.quant.factory import quantizer_for_weight
from adaround_lightning.quant.loss import AdaptiveRoundingLoss
from adaround_lightning.quant.quantizer import GAMMA, ZETA
from adaround_lightning.torch_frontend.refinement_phase import calibration_divergence

CPU = torch.device("cpu")


def _h(V: torch.Tensor) -> torch.Tensor:
    """eq. (23) in float64."""
    return (torch.sigmoid(V.double()) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5)
    )


def _quantizers(net: nn.Module, bits: int = 2) -> dict:
    layers = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    return {
        n: quantizer_for_weight(net.get_submodule(n).weight, bits, True, "minmax") for n in layers
    }


@pytest.mark.parametrize("start_h", [0.55, 0.7, 0.95])
def test_start_V_keeps_each_rounding_at_h0(start_h: float) -> None:
    generator = torch.Generator().manual_seed(3)
    quantizer = quantizer_for_weight(torch.randn(7, 5, generator=generator), 3, True, "minmax")
    up = quantizer.V >= 0
    V = start_V(quantizer, start_h)
    assert torch.equal(V >= 0, up)
    expected = torch.where(up, start_h, 1 - start_h).double()
    torch.testing.assert_close(_h(V), expected, atol=1e-6, rtol=0)


def test_output_divergence_is_the_kl_of_the_predictions_and_else_the_relative_error() -> None:
    generator = torch.Generator().manual_seed(4)
    q, t = torch.randn(9, 7, generator=generator), torch.randn(9, 7, generator=generator)
    p_t, p_q = torch.softmax(t.double(), 1), torch.softmax(q.double(), 1)
    kl = (p_t * (p_t.log() - p_q.log())).sum(1).mean()
    torch.testing.assert_close(output_divergence(q, t).double(), kl, rtol=1e-5, atol=1e-7)
    maps_q, maps_t = torch.randn(2, 3, 4, 4, generator=generator), torch.randn(2, 3, 4, 4)
    relative = ((maps_q.double() - maps_t) ** 2).sum() / (maps_t.double() ** 2).sum()
    both = output_divergence({"logits": q, "map": maps_q}, {"logits": t, "map": maps_t})
    torch.testing.assert_close(both.double(), kl + relative, rtol=1e-5, atol=1e-7)
    assert float(output_divergence(q, q)) == pytest.approx(0.0, abs=1e-6)


def test_hard_weights_are_the_integers_and_pass_the_gradient_of_h() -> None:
    net = _mlp(0)
    quantizers = _quantizers(net)
    module = NetworkRefinement(net, net, quantizers, [], AdaptiveRoundingLoss(max_iter=4), 0.01)
    weights = module.hard_weights()
    sum(w.sum() for w in weights.values()).backward()
    for (name, quantizer), V in zip(quantizers.items(), module.V, strict=True):
        grid = quantizer.weight_floor.double() + (V.detach() >= 0).double()
        clipped = grid.clamp(quantizer.quant_min, quantizer.quant_max)
        torch.testing.assert_close(
            weights[f"{name}.weight"].detach().double(), clipped * quantizer.scale.double()
        )
        # d/dV of s * clip(floor + h) at a hard rounding: s * h'(V) where both roundings are on
        # the grid, else 0.
        Vd = V.detach().double().requires_grad_(True)
        _h(Vd).sum().backward()
        floor = quantizer.weight_floor.double()
        inside = (floor >= quantizer.quant_min) & (floor + 1 <= quantizer.quant_max)
        expected = torch.where(inside, Vd.grad * quantizer.scale.double(), 0.0)
        torch.testing.assert_close(V.grad.double(), expected, rtol=1e-5, atol=1e-9)


def _settings(steps: int, **config) -> FitSettings:
    adaround = AdaroundConfig(batch_size=32, refine_steps=steps, seed=0, **config)
    return FitSettings(adaround, {"accelerator": "cpu", "devices": 1}, None, CPU)


def test_the_refined_network_holds_its_quantizers_integers_one_step_from_the_floor() -> None:
    teacher, student = _mlp(1), _mlp(1)
    quantizers = _quantizers(student)
    images = torch.randn(128, 6, generator=torch.Generator().manual_seed(5))
    walk_up = {n: q.V.detach() >= 0 for n, q in quantizers.items()}
    with CalibrationProgress(1, 0, False) as bar:
        outcome = fit_network(student, teacher, quantizers, [], images, 32, _settings(60), bar)
    assert 1 <= outcome.steps_run <= 60 and len(outcome.curve) == outcome.steps_run
    flips = 0
    for name, quantizer in quantizers.items():
        layer = student.get_submodule(name)
        assert torch.equal(layer.weight, quantizer.hard_weight())
        q, floor = quantizer.integer_weight().double(), quantizer.weight_floor.double()
        low = floor.clamp(quantizer.quant_min, quantizer.quant_max)
        high = (floor + 1).clamp(quantizer.quant_min, quantizer.quant_max)
        assert bool(((q == low) | (q == high)).all())
        flips += int(((quantizer.V >= 0) != walk_up[name]).sum())
    assert flips == outcome.flips


def test_refinement_lowers_the_output_divergence_of_round_to_nearest_on_its_images() -> None:
    # Round-to-nearest at 2 bits is far from the float network's output; the refinement trains
    # exactly that output's divergence, so on the images it trained on it must come down.
    teacher = _mlp(2)
    student = _mlp(2)
    quantizers = _quantizers(student)
    with torch.no_grad():
        for name, quantizer in quantizers.items():
            student.get_submodule(name).weight.copy_(quantizer.hard_weight())
    images = torch.randn(256, 6, generator=torch.Generator().manual_seed(6))
    before = calibration_divergence(student, teacher, images, 64)
    with CalibrationProgress(1, 0, False) as bar:
        outcome = fit_network(
            student, teacher, quantizers, [], images, 32, _settings(200, refine_lr=0.05), bar
        )
    after = calibration_divergence(student, teacher, images, 64)
    assert outcome.flips > 0
    assert after < 0.8 * before


def test_block_term_uses_each_block_output() -> None:
    net = nn.Sequential(nn.Sequential(nn.Linear(6, 8), nn.ReLU()), nn.Sequential(nn.Linear(8, 5)))
    quantizers = {
        n: quantizer_for_weight(net.get_submodule(n).weight, 2, True, "minmax")
        for n in ("0.0", "1.0")
    }
    fp = copy.deepcopy(net)
    module = NetworkRefinement(
        net, fp, quantizers, ["0", "1"], AdaptiveRoundingLoss(max_iter=4, warm_start=0.5), 0.01
    )
    module.on_train_start()
    x = torch.randn(16, 6)
    module._loss(x, 0)
    with torch.no_grad():
        hidden = net[0](x)
        float_out = net[1](hidden)
        weights = module.hard_weights(straight_through=False)
        q_hidden = torch.relu(x @ weights["0.0.weight"].T + net[0][0].bias)
        q_out = q_hidden @ weights["1.0.weight"].T + net[1][0].bias
    rel = [
        ((a.double() - b.double()) ** 2).sum() / (b.double() ** 2).sum()
        for a, b in ((q_hidden, hidden), (q_out, float_out))
    ]
    torch.testing.assert_close(module.history[0, 1].double(), sum(rel) / 2, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("refine_bits", [1], "refine_bits"),
        ("refine_bits", 2, "refine_bits"),
        ("refine_steps", 0, "refine_steps"),
        ("refine_lr", 0.0, "refine_lr"),
        ("refine_block_weight", -1.0, "refine_block_weight"),
    ],
)
def test_bad_refinement_settings_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdaroundConfig(**{field: value})

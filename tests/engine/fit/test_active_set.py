"""Settled elements skipped: the same integers as training every element, with less work."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from adaround_lightning.engine.adaround_config import AdaroundConfig
from adaround_lightning.engine.cache.activation_cache import CalibrationCache
from adaround_lightning.engine.engine_config import EngineConfig
from adaround_lightning.engine.fit import reconstruction
from adaround_lightning.engine.fit.active_set import ActiveRounding, swap_parameter
from adaround_lightning.engine.fit.fit_step import FitSettings, fit_block, fit_layer
from adaround_lightning.engine.progress import CalibrationProgress
from adaround_lightning.quant.factory import quantizer_for_weight
from adaround_lightning.quant.quantizer import GAMMA, ZETA
from adaround_lightning.quant.soft_rounding import soft_weight_and_regularizer

CPU = {"accelerator": "cpu", "devices": 1}


def _block(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 1), nn.ReLU()
    ).requires_grad_(False)


def _fit_block(skip_settled: bool, seed: int, steps_per_batch: int) -> dict[str, torch.Tensor]:
    """Fit a two-layer block; returns each layer's integers."""
    float_block = _block(seed)
    block = copy.deepcopy(float_block)
    images = torch.randn(64, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    cache = CalibrationCache(images, batch_size=16, num_steps=300, seed=seed)
    cache.steps_per_batch = steps_per_batch
    cache.cache_block(float_block, block, float_block, block)
    cache.cache_block_output(float_block, 0)
    quantizers = {
        n: quantizer_for_weight(block.get_submodule(n).weight, 3, True, "minmax")
        for n in ("0", "2")
    }
    config = AdaroundConfig(iters=300, batch_size=16, lr=0.05, stop_when_binary=False)
    engine = EngineConfig(steps_per_batch=steps_per_batch, skip_settled=skip_settled)
    settings = FitSettings(config, CPU, None, torch.device("cpu"), engine)
    with CalibrationProgress(1, 0, False) as bar:
        outcome = fit_block(block, quantizers, 300, cache, settings, "block", bar)
    assert outcome.steps_run == 300
    return {name: q.integer_weight() for name, q in quantizers.items()}


@pytest.mark.parametrize(("seed", "steps_per_batch"), [(0, 1), (1, 8)])
def test_skipping_settled_elements_gives_the_same_integers(
    seed: int, steps_per_batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    compactions = []
    original = ActiveRounding.compact

    def counting(self: ActiveRounding, keep: torch.Tensor) -> nn.Parameter:
        compactions.append((self.tracked, int(keep.sum())))
        return original(self, keep)

    monkeypatch.setattr(ActiveRounding, "compact", counting)
    every = _fit_block(False, seed, steps_per_batch)
    assert not compactions
    skipping = _fit_block(True, seed, steps_per_batch)
    # The fit did shrink its working set, several times, down to a small remainder...
    assert len(compactions) >= 4
    assert compactions[-1][1] < 0.5 * compactions[0][0]
    # ...and the integers are the full fit's. Exact in exact arithmetic; in float a kernel
    # may round an element by its position in the tensor (vectorized body or scalar tail),
    # so allow a tie or two to fall the other way.
    for name in every:
        differing = int((skipping[name] != every[name]).sum())
        assert differing <= max(1, every[name].numel() // 100), name
    # Some roundings moved away from round-to-nearest (the fit did something).
    assert any(not torch.equal(skipping[name], q) for name, q in _nearest(seed).items())


def _nearest(seed: int) -> dict[str, torch.Tensor]:
    block = _block(seed)
    return {
        n: quantizer_for_weight(block.get_submodule(n).weight, 3, True, "minmax").integer_weight()
        for n in ("0", "2")
    }


def test_a_compacted_rounding_gives_the_dense_weight_and_regularizer() -> None:
    torch.manual_seed(3)
    quantizer = quantizer_for_weight(torch.randn(5, 4, 3, 3), 3, True, "minmax")
    with torch.no_grad():
        quantizer.V.mul_(4.0)  # some elements clipped to 0 or 1 (settled)
    dense_weight, dense_reg = soft_weight_and_regularizer(quantizer, 6.0)
    unclipped = torch.sigmoid(quantizer.V) * (ZETA - GAMMA) + GAMMA
    keep = (unclipped > 0) & (unclipped < 1)
    assert 0 < int(keep.sum()) < keep.numel()
    rounding = ActiveRounding(quantizer, quantizer.V)
    rounding.compact(keep)
    weight, reg = rounding.soft(6.0)
    # Settled elements exactly (h is exactly 0 or 1); the rest up to a kernel's rounding.
    assert torch.equal(weight[~keep], dense_weight[~keep].detach())
    torch.testing.assert_close(weight, dense_weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(reg, dense_reg)
    # The gradient reaches exactly the unsettled elements, with the dense op's values.
    grad_output = torch.randn_like(weight)
    (weight * grad_output).sum().add(reg).backward()
    V = quantizer.V.detach().clone().requires_grad_(True)
    quantizer.V = nn.Parameter(V)
    dense_weight, dense_reg = soft_weight_and_regularizer(quantizer, 6.0)
    (dense_weight * grad_output).sum().add(dense_reg).backward()
    assert quantizer.V.grad is not None and rounding.parameter.grad is not None
    torch.testing.assert_close(rounding.parameter.grad, quantizer.V.grad[keep])
    assert bool((quantizer.V.grad[~keep] == 0).all())


def test_swapping_a_parameter_moves_adams_state_to_the_kept_elements() -> None:
    old = nn.Parameter(torch.randn(3, 4))
    adam = torch.optim.Adam([old], lr=0.1)
    for _ in range(3):
        old.grad = torch.randn(3, 4)
        adam.step()
    keep = torch.rand(3, 4) > 0.5
    before = {k: v.clone() for k, v in adam.state[old].items()}
    new = nn.Parameter(old.detach()[keep].clone())
    swap_parameter(adam, old, new, keep)
    state = adam.state[new]
    assert old not in adam.state and adam.param_groups[0]["params"][0] is new
    assert torch.equal(state["exp_avg"], before["exp_avg"][keep])
    assert torch.equal(state["exp_avg_sq"], before["exp_avg_sq"][keep])
    assert torch.equal(state["step"], before["step"])
    with pytest.raises(ValueError, match="not in the optimizer"):
        swap_parameter(adam, old, new, keep)


def test_a_layer_fit_with_settled_elements_skipped_matches_and_writes_V_back() -> None:
    def fit(skip_settled: bool) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(5)
        layer = nn.Linear(12, 7).requires_grad_(False)
        cache = CalibrationCache(torch.randn(64, 12), batch_size=16, num_steps=200, seed=5)
        cache.cache_block(layer, layer, layer, layer)
        cache.cache_layer(layer, layer, layer, layer, activation=None, layer_index=0)
        quantizer = quantizer_for_weight(layer.weight, 2, True, "minmax")
        config = AdaroundConfig(iters=200, batch_size=16, lr=0.1)
        engine = EngineConfig(skip_settled=skip_settled)
        settings = FitSettings(config, CPU, None, torch.device("cpu"), engine)
        with CalibrationProgress(1, 0, False) as bar:
            fit_layer(layer, quantizer, None, None, cache, settings, "fc", bar)
        return quantizer.integer_weight(), quantizer.V.detach().clone()

    every_integers, every_V = fit(False)
    skipping_integers, skipping_V = fit(True)
    # V of the skipped elements stopped where they settled, written back into the quantizer:
    # its signs (the rounding) agree with the full fit's, up to a tie (see above).
    assert int((skipping_integers != every_integers).sum()) <= 1
    assert int(((skipping_V >= 0) != (every_V >= 0)).sum()) <= 1
    assert not torch.equal(skipping_V, every_V)
    assert reconstruction.SETTLE_CHECK_EVERY < 200

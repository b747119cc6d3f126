"""The fit step: a fresh Trainer per fit, DDP without per-step buffer broadcasts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adaround_lightning.engine.adaround_config import AdaroundConfig
from adaround_lightning.engine.cache.activation_cache import CalibrationCache
from adaround_lightning.engine.engine_config import EngineConfig
from adaround_lightning.engine.fit import fit_step as fit_module
from adaround_lightning.engine.fit.fit_step import FitSettings, fit_layer
from adaround_lightning.engine.progress import CalibrationProgress
from adaround_lightning.quant.factory import quantizer_for_weight


def test_ddp_fits_do_not_broadcast_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def capture(kwargs: dict, *args: object, **more: object) -> None:
        seen.append(kwargs)
        raise RuntimeError("stop before launching processes")

    monkeypatch.setattr(fit_module, "inner_trainer", capture)
    layer = nn.Linear(4, 3).requires_grad_(False)
    cache = CalibrationCache(torch.randn(16, 4), batch_size=8, num_steps=2)
    cache.cache_block(layer, layer, layer, layer)
    cache.cache_layer(layer, layer, layer, layer, activation=None, layer_index=0)
    quantizer = quantizer_for_weight(layer.weight, 4, True, "minmax")
    ddp = {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}
    settings = FitSettings(AdaroundConfig(iters=2), ddp, None, torch.device("cpu"))
    with CalibrationProgress(1, 0, False) as bar, pytest.raises(RuntimeError, match="stop"):
        fit_layer(layer, quantizer, None, None, cache, settings, "fc", bar)
    strategy = seen[0]["strategy"]
    assert not isinstance(strategy, str) and strategy._ddp_kwargs["broadcast_buffers"] is False


def _fit_once(
    stop_when_binary: bool, seed: int, skip_settled: bool = False
) -> tuple[torch.Tensor, fit_module.FitOutcome]:
    """A layer fit whose every h(V) is driven to 0 or 1 well before its last step."""
    torch.manual_seed(seed)
    layer = nn.Linear(6, 5).requires_grad_(False)
    cache = CalibrationCache(torch.randn(64, 6), batch_size=16, num_steps=400, seed=seed)
    cache.cache_block(layer, layer, layer, layer)
    cache.cache_layer(layer, layer, layer, layer, activation=None, layer_index=0)
    quantizer = quantizer_for_weight(layer.weight, 3, True, "minmax")
    # A large learning rate and regularizer: every h(V) saturates early (the property tested
    # is that stopping there changes nothing, not how early real fits stop).
    config = AdaroundConfig(
        iters=400,
        batch_size=16,
        lr=0.5,
        reg_param=1.0,
        stop_when_binary=stop_when_binary,
    )
    cpu, engine = {"accelerator": "cpu", "devices": 1}, EngineConfig(skip_settled=skip_settled)
    settings = FitSettings(config, cpu, None, torch.device("cpu"), engine)
    with CalibrationProgress(1, 0, False) as bar:
        outcome = fit_layer(layer, quantizer, None, None, cache, settings, "fc", bar)
    return quantizer.integer_weight(), outcome


@pytest.mark.parametrize("seed", [0, 1])
def test_stopping_once_every_rounding_is_binary_gives_the_same_integers(seed: int) -> None:
    full_integers, full = _fit_once(False, seed)
    early_integers, early = _fit_once(True, seed, skip_settled=True)
    assert full.steps_run == full.steps == 400 and not full.stopped_early
    assert early.stopped_early and early.steps_run < 400
    assert torch.equal(early_integers, full_integers)
    # The curve covers the steps taken, none of the skipped (all-zero) history.
    assert early.curve[-1][0] < early.steps_run


def test_a_fit_never_stops_during_the_warm_start() -> None:
    _, outcome = _fit_once(True, 2)
    assert outcome.steps_run >= 0.2 * outcome.steps


def test_clamp_passes_no_gradient_at_its_bounds() -> None:
    # The early stop counts an h(V) sitting exactly on 0 or 1 as settled: that holds only while
    # torch.clamp's gradient is zero there.
    x = torch.tensor([0.0, 1.0, 0.5], requires_grad=True)
    torch.clamp(x, 0.0, 1.0).sum().backward()
    assert x.grad is not None and x.grad.tolist() == [0.0, 0.0, 1.0]

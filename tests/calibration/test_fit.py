"""The fit step: a fresh Trainer per fit, DDP without per-step buffer broadcasts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adaround_lightning.calibration import fit as fit_module
from adaround_lightning.calibration.cache import CalibrationCache
from adaround_lightning.calibration.config import AdaroundConfig
from adaround_lightning.calibration.fit import FitSettings, fit_layer
from adaround_lightning.calibration.progress import CalibrationProgress
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

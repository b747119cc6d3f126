"""The refinement as a phase of the walk: when it runs, resume, the cache budget, results."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from adaround_lightning import AdaroundConfig, QuantConfig, adaround
from adaround_lightning.engine.records.checkpoint import REFINEMENT_FILE
from adaround_lightning.engine.records.results import calibration_record

CPU = {"accelerator": "cpu"}


def _calibrate(model: nn.Module, images: torch.Tensor, bits: int = 2, checkpoint=None, **config):
    settings = {
        "iters": 16,
        "batch_size": 16,
        "refine_bits": [2],
        "refine_steps": 24,
        "seed": 3,
        **config,
    }
    return adaround(
        model,
        images,
        QuantConfig(weight_bits=bits, per_channel=True),
        AdaroundConfig(**settings),
        CPU,
        checkpoint=checkpoint,
    )


def _integers(result) -> dict[str, torch.Tensor]:
    return {name: q.integer_weight() for name, q in result.quantizers.items()}


def test_refinement_runs_at_the_refine_bits_and_not_at_others(tiny_cnn, images) -> None:
    two = _calibrate(tiny_cnn, images, bits=2)
    assert two.refinement is not None and two.refinement.bits == 2
    assert 1 <= two.refinement.steps_run <= 24
    for name, quantizer in two.quantizers.items():
        assert torch.equal(two.model.get_submodule(name).weight, quantizer.hard_weight())
    record = calibration_record(two)["refinement"]
    assert record["flips"] == two.refinement.flips and record["divergence_after"] >= 0
    assert _calibrate(tiny_cnn, images, bits=4).refinement is None
    assert AdaroundConfig().refine_bits == []  # off by default (docs/refinement.md)


def test_refine_bits_empty_leaves_the_walks_rounding(tiny_cnn, images) -> None:
    off = _calibrate(tiny_cnn, images, refine_bits=[])
    assert off.refinement is None
    on = _calibrate(tiny_cnn, images, refine_steps=48, refine_lr=0.05)
    changed = sum(
        int((on.quantizers[n].integer_weight() != q).sum()) for n, q in _integers(off).items()
    )
    # The walk is the same (same seed): every difference is one of the refinement's flips.
    assert changed == on.refinement.flips


def test_resume_restores_the_refinement_without_training_again(
    tiny_cnn, images, tmp_path: Path
) -> None:
    first = _calibrate(tiny_cnn, images, checkpoint=tmp_path)
    assert (tmp_path / REFINEMENT_FILE).is_file() and not first.refinement.resumed
    again = _calibrate(tiny_cnn, images, checkpoint=tmp_path)
    assert again.refinement.resumed and again.refinement.flips == first.refinement.flips
    for name, q in _integers(first).items():
        assert torch.equal(again.quantizers[name].integer_weight(), q)
        assert torch.equal(
            again.model.get_submodule(name).weight, first.model.get_submodule(name).weight
        )


def test_a_small_cache_budget_lowers_the_refinement_batch(tiny_cnn, images) -> None:
    from adaround_lightning.engine.engine_config import EngineConfig

    result = adaround(
        tiny_cnn,
        images,
        QuantConfig(weight_bits=2),
        AdaroundConfig(iters=8, batch_size=16, refine_bits=[2], refine_steps=8),
        CPU,
        engine=EngineConfig(cache_budget_gb=2e-6),
    )
    assert result.refinement is not None and result.refinement.batch_size < 16

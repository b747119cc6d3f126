"""Our benchmark runner: one calibration per grid cell, evaluated with and without A8."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from adaround_lightning.benchmarks.ours import run_grid


def test_rows_for_every_setting_and_a_float_baseline(
    tiny_cnn: nn.Module, images: torch.Tensor, tmp_path: Path
) -> None:
    model = nn.Sequential(tiny_cnn, nn.Linear(4, 10)).eval()  # 10 classes, as in the runner
    labels = torch.randint(0, 10, (images.shape[0],), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels[:32] = model(images[:32]).argmax(1)  # half the "test set" agrees with FP32
    out = tmp_path / "rows.jsonl"
    rows = run_grid(
        model,
        images,
        TensorDataset(images, labels),
        [4],
        [True, False],
        ["layer"],
        [32, 8],
        {"iters": 4, "batch_size": 16},
        {"arch": "tiny"},
        out,
    )
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    assert {(r["per_channel"], r["act_bits"]) for r in rows} == {
        (pc, a) for pc in (True, False) for a in (32, 8)
    }
    # FP32 top-1 recomputed independently: the first 32 labels agree by construction.
    with torch.no_grad():
        expected = 100.0 * float((model(images).argmax(1) == labels).float().mean())
    assert all(abs(r["fp32_top1"] - expected) < 0.01 for r in rows)
    assert all(0.0 <= r["adaround_top1"] <= 100.0 for r in rows)
    assert all(r["test_divergence"] >= 0.0 and r["refinement"] is None for r in rows)


def test_quant_fields_reach_the_calibration(
    tiny_cnn: nn.Module, images: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adaround_lightning.benchmarks import ours

    seen = []

    def spy(model, calib, quant, *args, **kwargs):
        seen.append(quant)
        return real(model, calib, quant, *args, **kwargs)

    real = ours.adaround
    monkeypatch.setattr(ours, "adaround", spy)
    model = nn.Sequential(tiny_cnn, nn.Linear(4, 10)).eval()
    labels = torch.zeros(images.shape[0], dtype=torch.long)
    rows = run_grid(
        model,
        images,
        TensorDataset(images, labels),
        [3],
        [True],
        ["layer"],
        [32],
        {"iters": 2, "batch_size": 16},
        {"arch": "tiny"},
        quant_fields={"weight_symmetric": False},
    )
    assert len(rows) == 1 and [q.weight_symmetric for q in seen] == [False]
    assert seen[0].weight_bits == 3

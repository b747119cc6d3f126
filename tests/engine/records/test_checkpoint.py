"""Resume records: typed, round-trip through torch.save, and read what older runs wrote."""

from __future__ import annotations

from pathlib import Path

import torch

from adaround_lightning.engine.records.checkpoint import (
    ActivationGrid,
    LayerCheckpoint,
    load_progress,
    save_layer_progress,
)
from adaround_lightning.engine.records.results import LayerReport
from adaround_lightning.quant.factory import quantizer_for_weight

CPU = torch.device("cpu")


def _report(name: str) -> LayerReport:
    return LayerReport(name, "Linear", [4, 3], 3, True, None, 0.5, 0.25, 0.1, 1.5, 20, [[0, 1, 0]])


def _entry(name: str, seed: int) -> LayerCheckpoint:
    weight = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed))
    quantizer = quantizer_for_weight(weight, 3, True, "minmax")
    grid = ActivationGrid(8, torch.tensor(0.05), torch.tensor(3, dtype=torch.int32))
    return LayerCheckpoint(
        state={k: v.clone() for k, v in quantizer.state_dict().items()},
        bits=3,
        per_channel=True,
        report=_report(name),
        bias=torch.randn(4, generator=torch.Generator().manual_seed(seed + 1)),
        act_state=grid,
    )


def test_save_then_load_restores_every_field(tmp_path: Path) -> None:
    entries = {"fc1": _entry("fc1", 0), "fc2": _entry("fc2", 1)}
    for position, (name, entry) in enumerate(entries.items()):
        save_layer_progress(tmp_path, "tag", list(entries)[: position + 1], name, entry)
    loaded = load_progress(tmp_path, "tag")
    assert list(loaded) == ["fc1", "fc2"]
    for name, entry in entries.items():
        got = loaded[name]
        assert got.report == entry.report and got.bits == 3 and got.per_channel
        assert got.state.keys() == entry.state.keys()
        assert all(torch.equal(got.state[k], v) for k, v in entry.state.items())
        assert torch.equal(got.bias, entry.bias)
        assert got.act_state is not None and got.act_state.bits == 8
        assert torch.equal(got.act_state.zero_point, entry.act_state.zero_point)


def test_the_restored_quantizer_rounds_like_the_saved_one() -> None:
    weight = torch.randn(5, 2, generator=torch.Generator().manual_seed(3))
    quantizer = quantizer_for_weight(weight, 4, False, "mse")
    with torch.no_grad():
        quantizer.V.normal_(generator=torch.Generator().manual_seed(4))
    entry = LayerCheckpoint(
        {k: v.clone() for k, v in quantizer.state_dict().items()}, 4, False, _report("x")
    )
    restored = entry.quantizer(CPU)
    assert not restored.use_soft_rounding
    assert torch.equal(restored.integer_weight(), quantizer.integer_weight())
    assert torch.equal(restored.hard_weight(), quantizer.hard_weight())


def test_entries_written_before_the_typed_record_are_read(tmp_path: Path) -> None:
    # The plain dict an earlier release torch.save-d per layer (no bias correction, no act grid).
    entry = _entry("fc", 2)
    old = {
        "state": entry.state,
        "bits": 3,
        "per_channel": True,
        "report": entry.report.to_dict(),
    }
    record = LayerCheckpoint.from_dict(old)
    assert record.bias is None and record.act_state is None and record.report == entry.report
    assert record.floor_scale is None
    # And the dict form is exactly the keys that release wrote, plus the three later ones.
    assert list(entry.to_dict()) == [*old, "bias", "act_state", "floor_scale"]

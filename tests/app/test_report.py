"""report.html on a tiny run: every layer in the table, only existing local files referenced."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from adaround_lightning import AdaroundConfig, adaround
from adaround_lightning.app.report import write_report
from adaround_lightning.engine.progress import CalibrationProgress


def _results(model: nn.Module, images: torch.Tensor) -> dict:
    result = adaround(
        model,
        images,
        config=AdaroundConfig(iters=30, batch_size=16),
        trainer={"accelerator": "cpu"},
    )
    return {
        "recipe": "test",
        "model": "TinyCNN",
        "quant": {"weight_bits": 4, "per_channel": True},
        "fp32": {"top1": 90.0, "top5": 99.0},
        "nearest": {"top1": 60.0, "top5": 95.0},
        "adaround": {"top1": 88.0, "top5": 99.0},
        "layers": [report.to_dict() for report in result.layers],
        "skipped": {},
        "calibration_seconds": result.seconds,
    }


def test_report_lists_every_layer_and_only_existing_files(
    tiny_cnn: nn.Module, images: torch.Tensor, tmp_path: Path
) -> None:
    results = _results(tiny_cnn, images)
    page = write_report(results, tmp_path).read_text()
    rows = re.findall(r"<tr><td>([^<]+)</td><td>(Conv2d|Linear)</td>", page)
    assert [name for name, _ in rows] == [layer["name"] for layer in results["layers"]]
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page)
    assert references, "the report shows its plots"
    for reference in references:
        assert "://" not in reference and not reference.startswith("//"), reference
        assert (tmp_path / reference).is_file(), reference
        assert (tmp_path / reference).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "@import" not in page and "<script" not in page


def test_progress_is_silent_when_disabled(capsys) -> None:  # type: ignore[no-untyped-def]
    with CalibrationProgress(total_layers=2, enabled=False) as bar:
        bar.start_layer("a", 10)
        bar.finish_layer()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "" and bar.done_layers == 1


def test_logs_go_to_one_csv(tiny_cnn: nn.Module, images: torch.Tensor, tmp_path: Path) -> None:
    from adaround_lightning.app.run import run_loggers

    result = adaround(
        tiny_cnn,
        images,
        config=AdaroundConfig(iters=12, batch_size=16),
        trainer={"accelerator": "cpu"},
        loggers=run_loggers(tmp_path),
    )
    files = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()]
    assert "logs/metrics.csv" in files
    assert not any("lightning_logs" in f or "version_" in f for f in files)
    header = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    for report in result.layers:
        assert f"{report.name}/reconstruction" in header
        assert f"{report.name}/regularization_mean" in header

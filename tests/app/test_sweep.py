"""Hydra multirun: every job runs, a failed one is recorded, the summary is written."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

from adaround_lightning.app.sweep import collect_jobs
from adaround_lightning.summarize import main as summarize_main
from tests.helpers.cli import run_cli

FAST = [
    "adaround.iters=3",
    "adaround.num_samples=32",
    "data.calibration.size=32",
    "data.eval_size=100",
    "trainer.accelerator=cpu",
    "export.onnx=false",
]


def _multirun(args: list[str], sweep_dir: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(
        ["-m", *args, *FAST, f"hydra.sweep.dir={sweep_dir}"], sweep_dir.parent, timeout=900
    )


def _is_png(path: Path) -> bool:
    import matplotlib.image

    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(path).ndim == 3


def test_two_job_multirun_writes_the_summary(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _multirun(["quant.weight_bits=3,4"], sweep)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (sweep / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["status"] for r in rows] == ["finished", "finished"]
    assert [r["weight_bits"] for r in rows] == ["3", "4"]
    for row in rows:
        results = json.loads((sweep / row["job"] / "results.json").read_text())
        assert float(row["adaround_top1"]) == results["adaround"]["top1"]
        assert f"quant.weight_bits={row['weight_bits']}" in row["overrides"]
    markdown = (sweep / "summary.md").read_text().splitlines()
    assert len(markdown) == 2 + 2
    assert _is_png(sweep / "summary.png")

    # summarize rebuilds the same files from the job folders alone.
    for name in ("summary.csv", "summary.md", "summary.png"):
        (sweep / name).unlink()
    assert summarize_main([str(sweep)]) == 0
    with (sweep / "summary.csv").open() as handle:
        assert list(csv.DictReader(handle)) == rows
    assert _is_png(sweep / "summary.png")


def test_a_failed_job_is_recorded_and_the_others_run(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _multirun(["quant.weight_bits=9,2"], sweep)
    assert proc.returncode == 1  # every job ran, one failed
    rows = collect_jobs(sweep)
    assert [r["status"] for r in rows] == ["failed", "finished"]
    assert "2 to 8" in rows[0]["error"]
    assert "failed" in (sweep / "summary.md").read_text()
    # A job folder without results.json (killed mid-run) is "incomplete".
    (sweep / "1" / "results.json").unlink()
    assert [r["status"] for r in collect_jobs(sweep)] == ["failed", "incomplete"]


def test_summarize_rejects_a_missing_folder(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert summarize_main([str(tmp_path / "nope")]) == 2
    assert "error:" in capsys.readouterr().err


def test_budget_sweep_plots_accuracy_against_size_beside_uniform_runs(tmp_path: Path) -> None:
    mixed, uniform = tmp_path / "mixed", tmp_path / "uniform"
    for args, sweep in (
        (["quant.average_bits=2.5,3.5"], mixed),
        (["quant.weight_bits=2,4"], uniform),
    ):
        proc = _multirun(args, sweep)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert summarize_main([str(mixed), "--with", str(uniform)]) == 0
    with (mixed / "summary.csv").open() as handle:
        rows = {r["job"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"0", "1", "uniform/0", "uniform/1"}
    size = {job: float(row["size_mb"]) for job, row in rows.items()}
    # Sizes grow with the budget and lie between the uniform W2 and W4 runs.
    assert size["uniform/0"] < size["0"] < size["1"] < size["uniform/1"]
    assert float(rows["0"]["average_bits"]) <= 2.5 and float(rows["1"]["average_bits"]) <= 3.5
    assert rows["0"]["budget"] == "quant.average_bits=2.5" and rows["uniform/0"]["budget"] == ""
    assert float(rows["uniform/1"]["average_bits"]) == 4.0
    assert _is_png(mixed / "summary.png")

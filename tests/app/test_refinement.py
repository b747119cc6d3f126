"""The refinement through the app: in every record, restored by ``resume=``, off by default."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from tests.helpers.cli import run_cli

RUN = [
    "quant.weight_bits=2",
    "adaround.refine_bits=[2,3]",
    "adaround.iters=12",
    "adaround.num_samples=64",
    "data.calibration.size=64",
    "data.eval_size=100",
    "trainer.accelerator=cpu",
    "export.onnx=false",
]


def test_refinement_reaches_results_report_and_console_and_resume_restores_it(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli([*RUN, f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    refinement = results["refinement"]
    assert refinement["bits"] == 2 and 1 <= refinement["steps_run"] <= 12
    assert results["grid_check"]["passed"]  # the files hold the refined integers
    assert "refinement at W2" in proc.stdout
    assert "refinement at W2" in (run_dir / "report.html").read_text()
    weights = load_file(str(run_dir / "quantized_weights.safetensors"))

    again = run_cli([*RUN, f"resume={run_dir}"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "restored from the checkpoint" in again.stdout
    resumed = json.loads((run_dir / "results.json").read_text())["refinement"]
    assert resumed["resumed"] and resumed["flips"] == refinement["flips"]
    for key, value in load_file(str(run_dir / "quantized_weights.safetensors")).items():
        assert value.equal(weights[key]), key


def test_refinement_is_off_by_default(tmp_path: Path) -> None:
    default = [arg for arg in RUN if not arg.startswith("adaround.refine_bits")]
    proc = run_cli([*default, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["refinement"] is None
    assert "refinement: off at W2" in proc.stdout + proc.stderr

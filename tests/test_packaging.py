"""The wheel carries the configs, recipes and quickstart assets, and runs outside the repo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_runs_from_outside_the_repo(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(tmp_path / "dist")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("*.whl"))
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    packaged = site / "adaround_lightning"
    assert (packaged / "conf" / "config.yaml").is_file()
    assert {p.stem for p in (packaged / "conf" / "recipe").glob("*.yaml")} >= {
        "quickstart",
        "mobilenetv2",
        "resnet18",
        "resnet50",
    }
    assert (packaged / "assets" / "quickstart" / "model.pt").is_file()
    # Benchmark tools (AIMET runners, training scripts) and their data are not in the wheel.
    assert not list(packaged.rglob("*.jsonl")) and not (packaged / "benchmarks").exists()

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import adaround_lightning, sys; print(adaround_lightning.__file__)",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip().startswith(str(site))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "adaround_lightning",
            "adaround.iters=2",
            "adaround.num_samples=32",
            "data.calibration.size=32",
            "data.eval_size=100",
            "trainer.accelerator=cpu",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    results = list(workdir.glob("outputs/quickstart/*/results.json"))
    assert len(results) == 1
    assert json.loads(results[0].read_text())["finished"] is True

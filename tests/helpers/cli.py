"""Running the command line in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_cli(
    args: list[str],
    cwd: Path,
    entry: list[str] | None = None,
    timeout: int = 600,
) -> subprocess.CompletedProcess[str]:
    """``python -m adaround_lightning ARGS`` (or ``python ENTRY ARGS``) with the repo importable."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    command = entry or ["-m", "adaround_lightning"]
    return subprocess.run(
        [sys.executable, *command, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    """Like :func:`run_cli` but returns the running process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "adaround_lightning", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

"""Running the command line in a subprocess, as a user would."""

from __future__ import annotations

import json
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


def run_cli_batch(
    cases: list[tuple[str, list[str], Path]], work: Path, timeout: int = 900
) -> dict[str, tuple[int, str]]:
    """Many command lines ``(name, args, cwd)``: per name, ``(exit status, stderr)``.

    Each runs in its own process, forked from one that imported the command line once
    (``tests/helpers/cli_batch.py``): the same ``main()``, argv, working directory, exit status
    and stderr as ``python -m adaround_lightning ARGS``, without paying the imports per case.
    """
    work.mkdir(parents=True, exist_ok=True)
    listing = [{"name": name, "args": args, "cwd": str(cwd)} for name, args, cwd in cases]
    (work / "cases.json").write_text(json.dumps(listing))
    proc = run_cli(
        [str(work / "cases.json"), str(work / "results.json")],
        work,
        entry=[str(REPO / "tests" / "helpers" / "cli_batch.py")],
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cli_batch.py failed ({proc.returncode}): {proc.stderr[-2000:]}")
    results = json.loads((work / "results.json").read_text())
    return {name: (r["returncode"], r["stderr"]) for name, r in results.items()}

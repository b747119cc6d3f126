"""``python -m adaround_lightning.verify RUN_DIR``: the grid check on a finished run's files.

Exits 0 and prints a one-line summary when every exported integer equals
``clamp(floor(W/s) + 1[V >= 0], q_min, q_max)`` and all files agree; exits 1 with the first
disagreement otherwise, 2 on a bad argument.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adaround_lightning.export import STATE_FILE, WEIGHTS_FILE, GridCheckError, verify_grid

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the grid check; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m adaround_lightning.verify", description=__doc__
    )
    parser.add_argument("run_dir", type=Path, help="a run directory with the exported files")
    args = parser.parse_args(argv)
    for name in (WEIGHTS_FILE, STATE_FILE):
        if not (args.run_dir / name).is_file():
            sys.stderr.write(f"error: {args.run_dir / name} is missing: pass a finished run dir\n")
            return 2
    try:
        report = verify_grid(args.run_dir)
    except GridCheckError as error:
        sys.stderr.write(f"grid check FAILED: {error}\n")
        return 1
    gap = report["max_abs_logit_diff"]
    sys.stdout.write(
        f"grid check passed: {report['weights']} integers in {report['layers']} layers equal "
        f"clamp(floor(W/s) + 1[V>=0]) ({report['rounding_reference']}) and agree across files"
        + ("" if gap is None else f"; ONNX vs PyTorch max |logit diff| {gap:.2g}")
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m adaround_lightning.summarize SWEEP_DIR [--with DIR ...]``: a sweep's summary files.

``--with`` adds the jobs of other sweeps, e.g. uniform ``quant.weight_bits=2,3,4`` runs beside a
``quant.average_bits`` sweep: the plot is then accuracy against model size for both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adaround_lightning.app.sweep import write_summary

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Write summary.csv/.md/.png in the sweep dir; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m adaround_lightning.summarize", description=__doc__
    )
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun dir (job folders 0, 1, ...)")
    parser.add_argument(
        "--with", dest="also", type=Path, nargs="*", default=[], help="other sweep dirs to add"
    )
    args = parser.parse_args(argv)
    for folder in (args.sweep_dir, *args.also):
        if not folder.is_dir():
            sys.stderr.write(f"error: {folder} is not a folder: pass a multirun sweep dir\n")
            return 2
    rows = write_summary(args.sweep_dir, args.also)
    if not rows:
        sys.stderr.write(f"error: {args.sweep_dir} holds no job folders\n")
        return 2
    sys.stdout.write((args.sweep_dir / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

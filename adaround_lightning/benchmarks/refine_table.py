r"""BENCHMARKS.md's refinement table from the rows of ``benchmarks/ours.py`` and the AIMET runner.

Example:
    cd docs/benchmarks/results
    python -m adaround_lightning.benchmarks.refine_table fmnist_refine.jsonl \
        fmnist_refine_aimet.jsonl fmnist_resnet18_aimet.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "refinement_table"]

_NAMES = {"resnet18": "ResNet18", "mobilenet_v2": "MobileNetV2"}
HEADER = (
    "| network (FP32) | weights | walk: top-1 / test KL / s | walk + refinement: top-1 / "
    "test KL / s (refinement s, flips) | AIMET `tf` | AIMET `tf_enhanced` |\n"
    "|---|---|---|---|---|---|"
)


def _read(paths: Sequence[Path]) -> list[dict[str, Any]]:
    return [json.loads(line) for path in paths for line in path.open() if line.strip()]


def _ours(row: dict[str, Any]) -> str:
    return (
        f"{row['adaround_top1']:.2f} / {row['test_divergence']:.4f} / {row['adaround_seconds']:.0f}"
    )


def _refined(row: dict[str, Any]) -> str:
    refinement = row["refinement"]
    return f"{_ours(row)} ({refinement['seconds']:.0f}, {refinement['flips']})"


def _aimet(rows: list[dict[str, Any]], arch: str, bits: int, scheme: str) -> str:
    for row in rows:
        if (row["arch"], row["bits"], row.get("quant_scheme")) == (arch, bits, scheme):
            return f"{row['adaround_top1']:.2f} ({row['adaround_seconds']:.0f} s)"
    return "-"


def refinement_table(paths: Sequence[Path]) -> str:
    """The markdown table: per network and bits, the walk alone, with the refinement, AIMET.

    Args:
        paths: JSON-lines files of ours (rows with and without ``refinement``, seed 0) and of
            the AIMET runner (``quant_scheme`` ``tf`` and ``tf_enhanced``).

    Returns:
        The table, one row per (network, bits) that has both of our rows.
    """
    rows = [r for r in _read(paths) if r.get("act_bits") == 32 and r.get("seed", 0) == 0]
    ours = [r for r in rows if r["tool"] == "adaround_lightning"]
    aimet = [r for r in rows if r["tool"] == "aimet"]
    lines = [HEADER]
    for arch in _NAMES:
        for bits in (2, 3):
            cell = [r for r in ours if (r["arch"], r["bits"]) == (arch, bits)]
            walk = [r for r in cell if r.get("refinement") is None]
            refined = [r for r in cell if r.get("refinement") is not None]
            if not walk or not refined:
                continue
            lines.append(
                f"| {_NAMES[arch]} ({walk[-1]['fp32_top1']:.2f}) | W{bits} | {_ours(walk[-1])} | "
                f"{_refined(refined[-1])} | {_aimet(aimet, arch, bits, 'tf')} | "
                f"{_aimet(aimet, arch, bits, 'tf_enhanced')} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the table of the given files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args(argv)
    sys.stdout.write(refinement_table(args.files) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

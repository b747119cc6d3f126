"""Merge the JSON lines of both benchmark runners into the markdown tables of BENCHMARKS.md.

Run as::

    python -m adaround_lightning.benchmarks.table ours.jsonl aimet.jsonl > tables.md

Per architecture and activation setting (A32, A8), one table: rows FP32, round-to-nearest,
AdaRound layer-wise, AdaRound block-wise, AIMET's round-to-nearest and AIMET's AdaRound; columns
W4/W3/W2 x per-tensor/per-channel. Missing cells are shown as ``-``. When a file holds the same
cell twice, the last line wins (re-runs append).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["load_rows", "main", "markdown_tables"]

_BITS = (4, 3, 2)
_ROWS = (
    ("FP32", "adaround_lightning", "layer", "fp32_top1"),
    ("round-to-nearest", "adaround_lightning", "layer", "nearest_top1"),
    ("AdaRound layer-wise (ours)", "adaround_lightning", "layer", "adaround_top1"),
    ("AdaRound block-wise (ours, default)", "adaround_lightning", "block", "adaround_top1"),
    ("AIMET round-to-nearest", "aimet", None, "nearest_top1"),
    ("AIMET AdaRound", "aimet", None, "adaround_top1"),
)


def load_rows(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """All JSON objects of the given JSON-lines files, in order.

    Example:
        >>> load_rows([])
        []
    """
    rows = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def _key(row: dict[str, Any]) -> tuple:
    granularity = row.get("granularity") if row["tool"] != "aimet" else None
    return (
        row["tool"],
        row["arch"],
        granularity,
        row["bits"],
        bool(row["per_channel"]),
        row["act_bits"],
    )


def markdown_tables(rows: Sequence[dict[str, Any]]) -> str:
    """The tables, one per (architecture, activation bits).

    Example:
        >>> row = {"tool": "aimet", "arch": "resnet18", "bits": 4, "per_channel": True,
        ...        "act_bits": 32, "fp32_top1": 92.0, "nearest_top1": 90.0, "adaround_top1": 91.0}
        >>> "| AIMET AdaRound | - | 91.00 |" in markdown_tables([row])
        True
    """
    cells = {_key(row): row for row in rows}
    lines: list[str] = []
    for arch in sorted({row["arch"] for row in rows}):
        for act_bits in sorted(
            {row["act_bits"] for row in rows if row["arch"] == arch}, reverse=True
        ):
            label = "A32 (float activations)" if act_bits == 32 else f"A{act_bits}"
            lines += [f"### {arch}, {label}", ""]
            header = ["top-1 %"] + [
                f"W{bits} {'per-channel' if pc else 'per-tensor'}"
                for bits in _BITS
                for pc in (False, True)
            ]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            for title, tool, granularity, field in _ROWS:
                values = []
                for bits in _BITS:
                    for pc in (False, True):
                        row = cells.get((tool, arch, granularity, bits, pc, act_bits))
                        if row is None and field in ("fp32_top1", "nearest_top1"):
                            # Ours without a layer-wise run: the block run's float/nearest.
                            row = cells.get((tool, arch, "block", bits, pc, act_bits))
                        if row is None and field == "fp32_top1":
                            row = cells.get(("aimet", arch, None, bits, pc, act_bits))
                        value = None if row is None else row.get(field)
                        values.append("-" if value is None else f"{value:.2f}")
                if any(v != "-" for v in values):
                    lines.append(f"| {title} | " + " | ".join(values) + " |")
            lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the tables of the given JSON-lines files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    sys.stdout.write(markdown_tables(load_rows(args.files)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

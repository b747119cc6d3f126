r"""Accuracy against model size, mixed precision beside uniform bits: BENCHMARKS.md's figure.

Reads the JSON lines of :mod:`~adaround_lightning.benchmarks.ours` runs (uniform ``--bits`` and
``--average-bits`` budgets, A32) and draws one panel per network from the seed-0 runs;
``--table`` prints BENCHMARKS.md's table instead (other seeds in parentheses).

Example:
    python -m adaround_lightning.benchmarks.mixed_plot RESULTS/fmnist_*_mixed.jsonl \
        --out docs/benchmarks/mixed_pareto.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "mixed_table"]


def _rows(paths: list[Path], seed: int | None = 0) -> dict[str, list[dict[str, Any]]]:
    by_arch: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if seed is not None and row.get("seed", 0) != seed:
                continue
            if row.get("act_bits") == 32 and not row.get("bits_from"):
                by_arch.setdefault(row["arch"], []).append(row)
    return by_arch


#: The columns of the table: uniform bits (int) or a budget (float), in order of size.
COLUMNS: list[int | float] = [2, 2.5, 3, 3.0, 3.5, 4]


def _cell(rows: list[dict[str, Any]], column: int | float) -> str:
    if isinstance(column, int):
        chosen = [r for r in rows if r["bits"] == column]
    else:
        chosen = [r for r in rows if r["bits"] is None and r["average_bits"] == column]
    if not chosen:
        return "-"
    chosen.sort(key=lambda r: r["seed"])
    first, others = chosen[0], chosen[1:]
    text = f"{first['adaround_top1']:.2f}"
    if others:
        text += " (" + ", ".join(f"{r['adaround_top1']:.2f}" for r in others) + ")"
    return f"{text}, {first['size_bytes'] / 1e6:.2f} MB"


def mixed_table(paths: list[Path]) -> str:
    """BENCHMARKS.md's table: top-1 (other seeds) and size per network and column."""
    head = ["network (FP32)"] + [
        f"W{c}" if isinstance(c, int) else f"{c:.1f} bits mixed" for c in COLUMNS
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arch, rows in sorted(_rows(paths, seed=None).items()):
        _sizes(rows)
        cells = [_cell(rows, c) for c in COLUMNS]
        lines.append(f"| {arch} ({rows[0]['fp32_top1']:.2f}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _sizes(rows: list[dict[str, Any]]) -> None:
    # A uniform run without its own size: the size a budget run computed for those bits.
    uniform = next(r["uniform_size_bytes"] for r in rows if r.get("uniform_size_bytes"))
    for row in rows:
        if row.get("size_bytes") is None:
            row["size_bytes"] = uniform[str(row["bits"])]


def main(argv: list[str] | None = None) -> int:
    """Draw the figure."""
    parser = argparse.ArgumentParser(prog="python -m adaround_lightning.benchmarks.mixed_plot")
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--table", action="store_true", help="print the Markdown table")
    args = parser.parse_args(argv)
    if args.table or args.out is None:
        sys.stdout.write(mixed_table(args.results) + "\n")
        return 0
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_arch = _rows(args.results)
    fig, _ = plt.subplots(1, len(by_arch), figsize=(5.2 * len(by_arch), 3.8), dpi=120)
    for ax, (arch, rows) in zip(fig.axes, sorted(by_arch.items()), strict=True):
        _sizes(rows)
        for label, style, chosen in (
            ("uniform", "s--", [r for r in rows if r["bits"] is not None]),
            ("mixed (quant.average_bits)", "o-", [r for r in rows if r["bits"] is None]),
        ):
            chosen.sort(key=lambda r: r["size_bytes"])
            sizes = [r["size_bytes"] / 1e6 for r in chosen]
            ax.plot(sizes, [r["adaround_top1"] for r in chosen], style, label=label)
            for r, size in zip(chosen, sizes, strict=True):
                text = f"W{r['bits']}" if r["bits"] else f"{r['average_bits']:g} b"
                ax.annotate(text, (size, r["adaround_top1"]), fontsize=7)
        ax.axhline(rows[0]["fp32_top1"], color="grey", linestyle=":", label="FP32")
        ax.set_title(arch)
        ax.set_xlabel("model size (MB)")
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

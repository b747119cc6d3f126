r"""Accuracy against model size, mixed precision beside uniform bits: BENCHMARKS.md's figure.

Reads the JSON lines of :mod:`~adaround_lightning.benchmarks.ours` runs (uniform ``--bits`` and
``--average-bits`` budgets, seed 0, A32) and draws one panel per network.

Example:
    python -m adaround_lightning.benchmarks.mixed_plot RESULTS/fmnist_*_mixed.jsonl \
        --out docs/benchmarks/mixed_pareto.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _rows(paths: list[Path]) -> dict[str, list[dict[str, Any]]]:
    by_arch: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("seed", 0) == 0 and row.get("act_bits") == 32 and not row.get("bits_from"):
                by_arch.setdefault(row["arch"], []).append(row)
    return by_arch


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
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
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

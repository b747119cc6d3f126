r"""BENCHMARKS.md's language-model table from the rows of :mod:`.causal_lm`.

Example:
    python -m adaround_lightning.benchmarks.causal_lm_table \
        docs/benchmarks/results/causal_lm.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["causal_lm_table", "main", "memory_table"]

HEADER = (
    "| weights | method | perplexity | vs FP32 | KL to FP32, 1e-3 nats/token "
    "| calibration s | peak RSS GiB |\n"
    "|---|---|---|---|---|---|---|"
)
_LABELS = {"rtn": "round-to-nearest (min/max)", "adaround": "AdaRound", "autoround": "AutoRound"}


def _read(paths: Sequence[Path]) -> list[dict[str, Any]]:
    return [json.loads(line) for path in paths for line in path.open() if line.strip()]


def _cells(row: dict[str, Any], fp32: float) -> str:
    delta = 100 * (row["perplexity"] / fp32 - 1)
    return (
        f"{row['perplexity']:.3f} | {delta:+.2f} % | {1e3 * row['kl_to_fp32']:.2f} | "
        f"{row['seconds']:.0f} | {row['peak_rss_gib']:.2f}"
    )


def causal_lm_table(paths: Sequence[Path]) -> str:
    """One row per (bits, method) of the main runs (no cache budget), FP32 first.

    The last row of a (bits, method) wins, so a rerun replaces an older one.
    """
    rows = [r for r in _read(paths) if r.get("cache_budget_gb") is None]
    fp32 = [r for r in rows if r["method"] == "fp32"][-1]["perplexity"]
    lines = [HEADER, f"| FP32 | - | {fp32:.3f} | - | 0 | - | - |"]
    latest = {(r["bits"], r["method"]): r for r in rows if r["method"] != "fp32"}
    for bits in sorted({bits for bits, _ in latest}, reverse=True):
        for method in ("rtn", "adaround", "autoround"):
            row = latest.get((bits, method))
            if row is not None:
                grid = f"W{bits} g{row['group_size']} {'sym' if row['symmetric'] else 'asym'}"
                lines.append(f"| {grid} | {_LABELS[method]} | {_cells(row, fp32)} |")
    return "\n".join(lines)


MEMORY_HEADER = (
    "| weights | cache budget GiB (disk tier) | perplexity | its checkpoint in transformers "
    "| peak RSS GiB | bound GiB |\n"
    "|---|---|---|---|---|---|"
)


def _exported(row: dict[str, Any]) -> str:
    value = row.get("exported_perplexity")
    return "-" if value is None else f"{value:.4f}"


def memory_table(paths: Sequence[Path]) -> str:
    """AdaRound runs with a cache budget against issue #39's bound on their peak RSS.

    The bound is the model's weights once, plus its largest decoder layer, plus the cache
    budget, plus 1 GiB.
    """
    lines = [MEMORY_HEADER]
    for row in _read(paths):
        if row["method"] == "adaround" and row.get("cache_budget_gb") is not None:
            bound = row["weights_gib"] + row["largest_block_gib"] + row["cache_budget_gb"] + 1
            lines.append(
                f"| W{row['bits']} g{row['group_size']} | {row['cache_budget_gb']} | "
                f"{row['perplexity']:.4f} | {_exported(row)} | {row['peak_rss_gib']:.3f} | "
                f"{bound:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    sys.stdout.write(causal_lm_table(args.files) + "\n\n" + memory_table(args.files) + "\n")


if __name__ == "__main__":
    main()

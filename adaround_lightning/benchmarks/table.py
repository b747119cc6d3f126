"""Merge the JSON lines of both benchmark runners into the markdown tables of BENCHMARKS.md.

Run as::

    python -m adaround_lightning.benchmarks.table ours.jsonl aimet.jsonl > tables.md

Per architecture and activation setting (A32, A8), one table: rows FP32, round-to-nearest,
AdaRound layer-wise, AdaRound block-wise, AIMET's round-to-nearest and AIMET's AdaRound; columns
W4/W3/W2 x per-tensor/per-channel. Missing cells are shown as ``-``. When a file holds the same
cell twice, the last line wins (re-runs append).

The main tables hold our default grid (``auto``, resolved per bit width) and seed 0. Runs with
other seeds are summarised in a seeds table (per seed and the mean, both tools), runs on other
grids or with ``--set`` overrides in a table of their own, so nothing measured is dropped.
Rows written before the runner recorded ``scale_method`` were on ``minmax``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["effective_grid", "load_rows", "main", "markdown_tables"]

#: Our default ``quant.scale_method``; the main tables show it.
DEFAULT_GRID = "auto"
#: Runner rows without ``scale_method`` predate the field and ran on this grid.
LEGACY_GRID = "minmax"

_BITS = (4, 3, 2)
_PLAIN: tuple = ()
_BIAS_CORRECTED: tuple = (("bias_correction", True),)
# The main tables predate issue #20: their block-wise rows ran `iters` x the block's layers
# steps at lr 1e-3 (`adaround.block_budget=layer adaround.lr=0.001`); issue #20's default and
# its Pareto tables are in :mod:`adaround_lightning.benchmarks.pareto`.
_ROWS = (
    ("FP32", "adaround_lightning", "layer", _PLAIN, "fp32_top1"),
    ("round-to-nearest", "adaround_lightning", "layer", _PLAIN, "nearest_top1"),
    (
        "AdaRound layer-wise (ours, as published)",
        "adaround_lightning",
        "layer",
        _PLAIN,
        "adaround_top1",
    ),
    ("AdaRound block-wise (ours)", "adaround_lightning", "block", _PLAIN, "adaround_top1"),
    (
        "AdaRound block-wise + bias correction (ours, the default before issue #20)",
        "adaround_lightning",
        "block",
        _BIAS_CORRECTED,
        "adaround_top1",
    ),
    ("AIMET round-to-nearest", "aimet", None, _PLAIN, "nearest_top1"),
    ("AIMET AdaRound", "aimet", None, _PLAIN, "adaround_top1"),
)
#: ``--set`` overrides that have a row of their own in the main tables.
_MAIN_SETTINGS = {_PLAIN, _BIAS_CORRECTED}


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


def effective_grid(row: dict[str, Any]) -> str:
    """The weight grid a row ran on, ``auto`` resolved (``full`` at 2 bits, ``minmax`` above).

    AIMET rows return ``"aimet"``.

    Example:
        >>> effective_grid({"tool": "adaround_lightning", "bits": 2, "scale_method": "auto"})
        'full'
    """
    if row["tool"] == "aimet":
        return "aimet"
    method = row.get("scale_method") or LEGACY_GRID
    if method == "auto":
        method = "full" if row["bits"] <= 2 else "minmax"
    return method


def _settings(row: dict[str, Any]) -> tuple:
    """The row's ``--set`` overrides, values parsed as JSON (``"true"`` -> True), sorted.

    ``bias_correction`` is taken from the row's recorded value (rows from before the option
    ran without it) and listed only when on, so plain AdaRound rows have no settings.
    """
    items = {}
    for key, value in (row.get("settings") or {}).items():
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(value) if isinstance(value, str) else value
        items[key] = value
    items.setdefault("bias_correction", bool(row.get("bias_correction", False)))
    if not items["bias_correction"]:
        del items["bias_correction"]
    return tuple(sorted(items.items()))


def _is_default_grid(row: dict[str, Any]) -> bool:
    """Our default grid and settings with a main-table row (AIMET rows always)."""
    if row["tool"] == "aimet":
        return True
    if _settings(row) not in _MAIN_SETTINGS:
        return False
    return effective_grid(row) == effective_grid({**row, "scale_method": DEFAULT_GRID})


def _key(row: dict[str, Any]) -> tuple:
    granularity = row.get("granularity") if row["tool"] != "aimet" else None
    return (
        row["tool"],
        row["arch"],
        granularity,
        _settings(row),
        row["bits"],
        bool(row["per_channel"]),
        row["act_bits"],
    )


def _label(row: dict[str, Any]) -> str:
    if row["tool"] == "aimet":
        return "AIMET AdaRound"
    extra = "".join(f" {k}={v}" for k, v in _settings(row))
    return f"ours {row.get('granularity', 'layer')}-wise{extra}"


def _cell(row: dict[str, Any]) -> str:
    return (
        f"W{row['bits']}A{row['act_bits']} {'per-channel' if row['per_channel'] else 'per-tensor'}"
    )


def _seed_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Cells run with more than one seed: top-1 per seed and the mean, per tool."""
    runs: dict[tuple, dict[int, float]] = {}
    for row in rows:
        if _is_default_grid(row):
            key = (row["arch"], _cell(row), _label(row))
            runs.setdefault(key, {})[int(row.get("seed", 0))] = row["adaround_top1"]
    cells = {key[:2] for key, seeds in runs.items() if len(seeds) > 1}
    if not cells:
        return []
    seeds = sorted({s for key, per in runs.items() if key[:2] in cells for s in per})
    lines = [
        "### Seeds",
        "",
        "| model | cell | tool | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
        "|" + "---|" * (4 + len(seeds)),
    ]
    for key in sorted(k for k in runs if k[:2] in cells):
        per = runs[key]
        values = [f"{per[s]:.2f}" if s in per else "-" for s in seeds]
        mean = sum(per.values()) / len(per)
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(values) + f" | {mean:.2f} |"
        )
    return [*lines, ""]


def _other_grid_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Our runs on a grid other than the default or with other settings, one line each."""
    other = [row for row in rows if not _is_default_grid(row)]
    if not other:
        return []
    lines = [
        "### Other grids and settings",
        "",
        "| model | cell | tool | grid | settings | seed | round-to-nearest | AdaRound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in other:
        lines.append(
            f"| {row['arch']} | {_cell(row)} | {_label(row)} | {effective_grid(row)} | "
            f"{' '.join(f'{k}={v}' for k, v in (row.get('settings') or {}).items()) or '-'} | "
            f"{row.get('seed', 0)} | {row['nearest_top1']:.2f} | {row['adaround_top1']:.2f} |"
        )
    return [*lines, ""]


def markdown_tables(rows: Sequence[dict[str, Any]]) -> str:
    """The tables, one per (architecture, activation bits).

    Example:
        >>> row = {"tool": "aimet", "arch": "resnet18", "bits": 4, "per_channel": True,
        ...        "act_bits": 32, "fp32_top1": 92.0, "nearest_top1": 90.0, "adaround_top1": 91.0}
        >>> "| AIMET AdaRound | 91.00 |" in markdown_tables([row])
        True
    """
    cells = {_key(row): row for row in rows if _is_default_grid(row) and row.get("seed", 0) == 0}
    lines: list[str] = []
    for arch in sorted({row["arch"] for row in rows}):
        for act_bits in sorted(
            {row["act_bits"] for row in rows if row["arch"] == arch}, reverse=True
        ):
            label = "A32 (float activations)" if act_bits == 32 else f"A{act_bits}"
            lines += [f"### {arch}, {label}", ""]
            # The cells measured for this network: a model benchmarked per channel only
            # gets no per-tensor columns.
            columns = [
                (bits, pc)
                for bits in _BITS
                for pc in (False, True)
                if any(k[1] == arch and k[-3:] == (bits, pc, act_bits) for k in cells)
            ]
            header = ["top-1 %"] + [
                f"W{bits} {'per-channel' if pc else 'per-tensor'}" for bits, pc in columns
            ]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            for title, tool, granularity, settings, field in _ROWS:
                values = []
                for bits, pc in columns:
                    cell = (bits, pc, act_bits)
                    row = cells.get((tool, arch, granularity, settings, *cell))
                    for other in _MAIN_SETTINGS if field in ("fp32_top1", "nearest_top1") else ():
                        # Ours without a layer-wise run: a block run's float/nearest.
                        row = row or cells.get((tool, arch, "block", other, *cell))
                    if row is None and field == "fp32_top1":
                        row = cells.get(("aimet", arch, None, _PLAIN, *cell))
                    value = None if row is None else row.get(field)
                    values.append("-" if value is None else f"{value:.2f}")
                if any(v != "-" for v in values):
                    lines.append(f"| {title} | " + " | ".join(values) + " |")
            lines.append("")
    lines += _seed_table(rows) + _other_grid_table(rows)
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

"""Accuracy against calibration time per cell: the Pareto tables of BENCHMARKS.md (issue #20).

Run as::

    python -m adaround_lightning.benchmarks.pareto ours.jsonl aimet.jsonl > pareto.md

Reads the JSON lines of both runners (:mod:`~adaround_lightning.benchmarks.ours`,
:mod:`~adaround_lightning.benchmarks.aimet_adaround`). Per cell (network, weight bits,
per-channel or per-tensor, activation bits), one table of every run of seed 0: top-1, seconds,
the seconds as a multiple of AIMET's in the same cell and seed (the runners of a cell ran side by
side, one thread each), and whether the run is on the Pareto front (no other run is at least as
accurate and at least as fast). Then one summary line per cell: our default against AIMET, mean
over the seeds run, with the seed-to-seed spread and the verdict on the goal (at least as
accurate within the spread, at most 0.5x AIMET's time). Lines of another calibration draw
(``calib_seed`` other than 0) are left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from adaround_lightning.benchmarks.table import load_rows

__all__ = ["Run", "main", "pareto_tables", "run_label"]

#: The goal of issue #20: our default in at most this multiple of AIMET's calibration time.
TIME_GOAL = 0.5
AIMET = "AIMET AdaRound"
DEFAULT = "ours, default"
#: ``--set`` overrides (sorted) of the named runs of ours, per granularity.
_NAMED = {
    ("block", ()): DEFAULT,
    ("layer", (("bias_correction", False), ("lr", 0.001))): "ours, layer-wise as published",
    ("block", (("block_budget", "layer"), ("lr", 0.001))): (
        "ours, block-wise before #20 (iters x layers steps, lr 1e-3)"
    ),
}


@dataclass(frozen=True)
class Run:
    """One runner line reduced to what the tables show.

    Attributes:
        cell: ``(arch, bits, per_channel, act_bits)``.
        label: What ran (see :func:`run_label`).
        seed: Seed of the random batches.
        top1: AdaRound top-1 %.
        seconds: Calibration wall time.
    """

    cell: tuple[str, int, bool, int]
    label: str
    seed: int
    top1: float
    seconds: float

    @classmethod
    def of(cls, row: dict[str, Any]) -> Run:
        """The run of a runner line."""
        cell = (row["arch"], int(row["bits"]), bool(row["per_channel"]), int(row["act_bits"]))
        return cls(
            cell,
            run_label(row),
            int(row.get("seed", 0)),
            row["adaround_top1"],
            row["adaround_seconds"],
        )


def run_label(row: dict[str, Any]) -> str:
    """The name of what a runner line ran: AIMET, our default, or ours with its overrides.

    Example:
        >>> run_label({"tool": "adaround_lightning", "granularity": "block", "settings": {}})
        'ours, default'
        >>> run_label({"tool": "adaround_lightning", "granularity": "layer",
        ...            "settings": {"lr": "0.01"}})
        'ours, layer-wise lr=0.01'
        >>> run_label({"tool": "adaround_lightning", "granularity": "block", "settings": {},
        ...            "scale_method": "minmax"})
        'ours, block-wise scale_method=minmax'
    """
    if row["tool"] == "aimet":
        return AIMET
    overrides = {k: _parsed(v) for k, v in (row.get("settings") or {}).items()}
    if row.get("scale_method", "auto") != "auto":
        overrides["scale_method"] = row["scale_method"]
    settings = tuple(sorted(overrides.items()))
    granularity = row.get("granularity", "layer")
    named = _NAMED.get((granularity, settings))
    if named is not None:
        return named
    return f"ours, {granularity}-wise " + " ".join(f"{k}={v}" for k, v in settings)


def _parsed(value: Any) -> Any:
    """A ``--set`` value as the runner's config saw it (``"false"`` -> False)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _on_front(run: Run, runs: Sequence[Run]) -> bool:
    """No other run is at least as accurate and as fast, and strictly better in one."""
    return not any(
        o.top1 >= run.top1
        and o.seconds <= run.seconds
        and (o.top1, o.seconds) != (run.top1, run.seconds)
        for o in runs
    )


def _cell_name(cell: tuple[str, int, bool, int]) -> str:
    arch, bits, per_channel, act_bits = cell
    return f"{arch} W{bits}A{act_bits} {'per-channel' if per_channel else 'per-tensor'}"


def _cell_table(cell: tuple[str, int, bool, int], runs: Sequence[Run]) -> list[str]:
    """Seed-0 runs of one cell, the fastest first."""
    seed0 = sorted((r for r in runs if r.cell == cell and r.seed == 0), key=lambda r: r.seconds)
    aimet = next((r for r in seed0 if r.label == AIMET), None)
    lines = [
        f"#### {_cell_name(cell)}",
        "",
        "| run | top-1 % | seconds | x AIMET's time | top-1 - AIMET | Pareto front |",
        "|---|---|---|---|---|---|",
    ]
    for run in seed0:
        ratio = f"{run.seconds / aimet.seconds:.2f}" if aimet else "-"
        delta = f"{run.top1 - aimet.top1:+.2f}" if aimet else "-"
        front = "yes" if _on_front(run, seed0) else ""
        lines.append(
            f"| {run.label} | {run.top1:.2f} | {run.seconds:.1f} | {ratio} | {delta} | {front} |"
        )
    return [*lines, ""]


def _summary_line(cell: tuple[str, int, bool, int], runs: Sequence[Run]) -> str | None:
    """Our default against AIMET in one cell: means over seeds, spread, time ratio, verdict."""
    ours = {r.seed: r for r in runs if r.cell == cell and r.label == DEFAULT}
    aimet = {r.seed: r for r in runs if r.cell == cell and r.label == AIMET}
    if not ours or not aimet:
        return None
    ours_top1, aimet_top1 = (
        mean(r.top1 for r in ours.values()),
        mean(r.top1 for r in aimet.values()),
    )
    spreads = [
        max(v) - min(v)
        for v in ([r.top1 for r in ours.values()], [r.top1 for r in aimet.values()])
        if len(v) > 1
    ]
    spread = max(spreads) if spreads else None
    paired = sorted(set(ours) & set(aimet))
    ratio = max(ours[s].seconds / aimet[s].seconds for s in paired) if paired else float("nan")
    accurate = ours_top1 >= aimet_top1 - (spread or 0.0)
    verdict = "holds" if accurate and ratio <= TIME_GOAL else "missed"
    seeds = ", ".join(str(s) for s in sorted(set(ours) | set(aimet)))
    return (
        f"| {_cell_name(cell)} | {seeds} | {ours_top1:.2f} | {aimet_top1:.2f} | "
        f"{ours_top1 - aimet_top1:+.2f} | {'-' if spread is None else f'{spread:.2f}'} | "
        f"{ratio:.2f} | {verdict} |"
    )


def pareto_tables(rows: Sequence[dict[str, Any]]) -> str:
    """The per-cell tables and the summary of our default against AIMET (markdown).

    Example:
        >>> rows = [{"tool": "aimet", "arch": "m", "bits": 4, "per_channel": True,
        ...          "act_bits": 32, "adaround_top1": 90.0, "adaround_seconds": 100.0},
        ...         {"tool": "adaround_lightning", "granularity": "block", "settings": {},
        ...          "arch": "m", "bits": 4, "per_channel": True, "act_bits": 32,
        ...          "adaround_top1": 90.5, "adaround_seconds": 40.0}]
        >>> "| m W4A32 per-channel | 0 | 90.50 | 90.00 | +0.50 | - | 0.40 | holds |" in (
        ...     pareto_tables(rows))
        True
    """
    # The last line of a (cell, run, seed) wins: re-runs append. Another calibration draw is
    # another experiment, not a seed of this one: left out.
    drawn = [row for row in rows if int(row.get("calib_seed", 0)) == 0]
    latest = {(r.cell, r.label, r.seed): r for r in map(Run.of, drawn)}
    runs = list(latest.values())
    cells = sorted({r.cell for r in runs}, key=lambda c: (c[0], -c[1], not c[2], -c[3]))
    lines: list[str] = []
    for cell in cells:
        lines += _cell_table(cell, runs)
    summary = [line for cell in cells if (line := _summary_line(cell, runs))]
    if summary:
        lines += [
            "#### Our default against AIMET",
            "",
            "| cell | seeds | ours top-1 | AIMET top-1 | difference | seed spread | "
            "time x AIMET (worst seed) | goal |",
            "|---|---|---|---|---|---|---|---|",
            *summary,
            "",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the tables of the given JSON-lines files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    sys.stdout.write(pareto_tables(load_rows(args.files)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""BENCHMARKS.md's mixed-precision table is the results files, and its budgets hold."""

from __future__ import annotations

import json
from pathlib import Path

from adaround_lightning.benchmarks.mixed_plot import mixed_table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "benchmarks" / "results"


def test_the_mixed_precision_table_is_the_results_file() -> None:
    text = (REPO / "BENCHMARKS.md").read_text()
    table = text.split("<!-- mixed-table -->", 1)[1].strip().split("\n\n", 1)[0]
    assert table == mixed_table([RESULTS / "fmnist_mixed_ours.jsonl"])


def test_every_budget_run_met_its_budget() -> None:
    rows = [json.loads(line) for line in (RESULTS / "fmnist_mixed_ours.jsonl").open()]
    budgets = [r for r in rows if r["bits"] is None]
    assert budgets
    for row in budgets:
        assert row["achieved_average_bits"] <= row["average_bits"]

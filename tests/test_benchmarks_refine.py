"""BENCHMARKS.md's refinement table is the results files."""

from __future__ import annotations

from pathlib import Path

from adaround_lightning.benchmarks.refine_table import refinement_table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "benchmarks" / "results"
FILES = ["fmnist_refine.jsonl", "fmnist_refine_aimet.jsonl", "fmnist_resnet18_aimet.jsonl"]


def test_the_refinement_table_is_the_results_files() -> None:
    text = (REPO / "BENCHMARKS.md").read_text()
    table = text.split("<!-- refine-table -->", 1)[1].strip().split("\n\n", 1)[0]
    assert table == refinement_table([RESULTS / name for name in FILES])
    assert table.count("\n") >= 4  # both networks at W2 and W3

"""BENCHMARKS.md's language-model tables are the results file."""

from __future__ import annotations

import json
from pathlib import Path

from adaround_lightning.benchmarks.causal_lm_table import causal_lm_table, memory_table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "benchmarks" / "results" / "causal_lm.jsonl"


def _table_after(marker: str) -> str:
    text = (REPO / "BENCHMARKS.md").read_text()
    return text.split(marker, 1)[1].strip().split("\n\n", 1)[0]


def test_the_causal_lm_tables_are_the_results_file() -> None:
    assert _table_after("<!-- causal-lm-table -->") == causal_lm_table([RESULTS])
    assert _table_after("<!-- causal-lm-memory -->") == memory_table([RESULTS])


def test_every_method_ran_at_both_bit_widths_on_the_same_text() -> None:
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    cells = {(r["method"], r["bits"]) for r in rows if r["method"] != "fp32"}
    assert {(m, b) for m in ("rtn", "adaround", "autoround") for b in (3, 4)} <= cells
    assert len({r["eval_windows"] for r in rows}) == 1  # one held-out text for every row


def test_the_benchmark_runs_adaround_with_the_recipes_settings() -> None:
    import yaml

    from adaround_lightning.benchmarks.causal_lm import _parse

    recipe = yaml.safe_load((REPO / "recipes" / "causal_lm.yaml").read_text())
    args = _parse(["--model", "M", "--method", "adaround"])
    adaround = recipe["adaround"]
    assert (args.iters, args.batch_size, args.num_samples) == (
        adaround["iters"],
        adaround["batch_size"],
        adaround["num_samples"],
    )
    assert (args.lr, args.straight_through) == (adaround["lr"], adaround["straight_through"])
    assert adaround["learn_scale"] and args.scale_lr == adaround["scale_lr"]
    assert (args.bits, args.group_size, args.symmetric) == (
        recipe["quant"]["weight_bits"],
        recipe["quant"]["group_size"],
        recipe["quant"]["weight_symmetric"],
    )

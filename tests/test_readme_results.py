"""Every figure of the README's results table comes from the results files it names."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "benchmarks" / "results"


def _rows() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    table = text.split("<!-- results-table -->", 1)[1].strip().split("\n\n", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def _records(name: str) -> list[dict]:
    return [json.loads(line) for line in (RESULTS / name).read_text().splitlines() if line]


def test_the_results_table_is_the_results_files() -> None:
    ours = [
        r
        for r in _records("timm_resnet18_ours.jsonl")
        if r["granularity"] == "block" and r["seed"] == 0 and r["per_channel"]
    ]
    aimet = _records("timm_resnet18_aimet.jsonl")
    rows = _rows()
    assert [row[0] for row in rows] == ["W4", "W3"]
    for row in rows:
        bits = int(row[0][1:])
        (mine,) = [r for r in ours if r["bits"] == bits and r["act_bits"] == 32]
        tf, tfe = (
            next(r for r in aimet if r["bits"] == bits and r["quant_scheme"] == scheme)
            for scheme in ("tf", "tf_enhanced")
        )
        expected = [
            f"{mine['nearest_top1']:.2f}",
            f"{mine['adaround_top1']:.2f}",
            f"{tf['adaround_top1']:.2f}",
            f"{tfe['adaround_top1']:.2f}",
            " / ".join(
                f"{round(r.get('seconds') or r['adaround_seconds'])}" for r in (mine, tf, tfe)
            ),
        ]
        assert row[1:] == expected, row
        assert mine["fp32_top1"] == tf["fp32_top1"] == tfe["fp32_top1"] == 89.5
        assert mine["layers"] == 21 and mine["layers_in_blocks"] == 19

"""The benchmark entry point runs and prints per-layer and total figures."""

from __future__ import annotations

import re

from adaround_lightning.bench import main


def test_bench_prints_per_layer_and_totals(capsys) -> None:  # type: ignore[no-untyped-def]
    assert (
        main(
            [
                "--layers",
                "2",
                "--steps",
                "6",
                "--samples",
                "64",
                "--batch",
                "16",
                "--accelerator",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "ms/step" in line and "ratio" in line]
    assert len(rows) == 2
    for row in rows:
        lightning, eager = map(float, re.findall(r"(\d+\.\d+) ms/step", row))
        assert lightning > 0 and eager > 0
    assert "projected calibration" in out and "peak host memory" in out

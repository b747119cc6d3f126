"""The benchmark table: cells land where their bits, grid, tool and granularity say."""

from __future__ import annotations

import json
import random
from pathlib import Path

from adaround_lightning.benchmarks.table import load_rows, markdown_tables


def _row(tool: str, bits: int, pc: bool, act: int, granularity: str | None, value: float) -> dict:
    row = {
        "tool": tool,
        "arch": "resnet18",
        "bits": bits,
        "per_channel": pc,
        "act_bits": act,
        "fp32_top1": 92.0,
        "nearest_top1": value - 1,
        "adaround_top1": value,
    }
    if granularity:
        row["granularity"] = granularity
        row["scale_method"] = "auto"
    return row


def test_every_cell_is_placed_by_its_settings(tmp_path: Path) -> None:
    rng = random.Random(0)
    rows, expected = [], {}
    for tool, granularity in (
        ("adaround_lightning", "layer"),
        ("adaround_lightning", "block"),
        ("aimet", None),
    ):
        for bits in (4, 3, 2):
            for pc in (False, True):
                for act in (32, 8):
                    value = round(rng.uniform(10, 90), 2)
                    rows.append(_row(tool, bits, pc, act, granularity, value))
                    expected[(tool, granularity, bits, pc, act)] = value
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = markdown_tables(load_rows([path]))
    titles = {
        ("adaround_lightning", "layer"): "AdaRound layer-wise (ours, as published)",
        ("adaround_lightning", "block"): "AdaRound block-wise (ours",
        ("aimet", None): "AIMET AdaRound",
    }
    for act in (32, 8):
        section = text.split(f"### resnet18, A{act}")[1].split("###")[0]
        lines = {
            line.split(" | ")[0].strip("| "): line
            for line in section.splitlines()
            if line.startswith("|")
        }
        for (tool, granularity), title in titles.items():
            line = next(v for k, v in lines.items() if k.startswith(title))
            cells = line.strip("| ").split(" | ")[1:]
            wanted = [
                f"{expected[(tool, granularity, bits, pc, act)]:.2f}"
                for bits in (4, 3, 2)
                for pc in (False, True)
            ]
            assert cells == wanted


def test_a_rerun_replaces_the_earlier_cell() -> None:
    text = markdown_tables(
        [_row("aimet", 4, True, 32, None, 50.0), _row("aimet", 4, True, 32, None, 60.0)]
    )
    assert "60.00" in text and "50.00" not in text


def test_other_seeds_and_grids_leave_the_main_table_and_are_listed() -> None:
    rng = random.Random(1)
    seed0, seed1, aimet0, aimet1 = (round(rng.uniform(10, 90), 2) for _ in range(4))
    minmax_w2, tuned = round(rng.uniform(10, 90), 2), round(rng.uniform(10, 90), 2)
    rows = [
        {**_row("adaround_lightning", 3, True, 32, "block", tuned), "settings": {"lr": 0.01}},
        {**_row("adaround_lightning", 4, True, 32, "block", seed0), "seed": 0},
        {**_row("adaround_lightning", 4, True, 32, "block", seed1), "seed": 1},
        {**_row("aimet", 4, True, 32, None, aimet0), "seed": 0},
        {**_row("aimet", 4, True, 32, None, aimet1), "seed": 1},
        # No scale_method: a row from before the field, on minmax; not the default at 2 bits.
        {
            k: v
            for k, v in _row("adaround_lightning", 2, True, 32, "block", minmax_w2).items()
            if k != "scale_method"
        },
    ]
    text = markdown_tables(rows)
    main, rest = text.split("### Seeds")
    assert f"{seed0:.2f}" in main and f"{aimet0:.2f}" in main
    assert f"{seed1:.2f}" not in main and f"{minmax_w2:.2f}" not in main
    assert f"{tuned:.2f}" not in main
    seeds, other = rest.split("### Other grids and settings")
    ours = next(line for line in seeds.splitlines() if "ours block-wise" in line)
    assert ours.split(" | ")[-1].strip(" |") == f"{(seed0 + seed1) / 2:.2f}"
    theirs = next(line for line in seeds.splitlines() if "AIMET" in line)
    assert theirs.split(" | ")[-1].strip(" |") == f"{(aimet0 + aimet1) / 2:.2f}"
    assert f"| minmax | - | 0 | {minmax_w2 - 1:.2f} | {minmax_w2:.2f} |" in other
    assert f"| minmax | lr=0.01 | 0 | {tuned - 1:.2f} | {tuned:.2f} |" in other


def test_auto_resolves_per_bit_width() -> None:
    from adaround_lightning.benchmarks.table import effective_grid

    row = {"tool": "adaround_lightning", "scale_method": "auto"}
    assert effective_grid({**row, "bits": 2}) == "full"
    assert effective_grid({**row, "bits": 3}) == "minmax"
    assert effective_grid({"tool": "adaround_lightning", "bits": 4}) == "minmax"


def test_bias_correction_rows_by_recorded_or_explicit_setting() -> None:
    explicit_off = {
        **_row("adaround_lightning", 4, True, 32, "layer", 70.0),
        "settings": {"bias_correction": "false"},
    }
    recorded_on = {
        **_row("adaround_lightning", 4, True, 32, "block", 80.0),
        "bias_correction": True,
    }
    explicit_on = {
        **_row("adaround_lightning", 3, True, 32, "block", 60.0),
        "settings": {"bias_correction": "true"},
    }
    text = markdown_tables([explicit_off, recorded_on, explicit_on])
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    # Only the measured cells are columns: W4 and W3 per-channel.
    assert lines["top-1 %"] == "| top-1 % | W4 per-channel | W3 per-channel |"
    assert lines["AdaRound layer-wise (ours, as published)"].split(" | ")[1:] == ["70.00", "- |"]
    corrected = next(v for k, v in lines.items() if k.startswith("AdaRound block-wise + bias"))
    assert corrected.split(" | ")[1:] == ["80.00", "60.00 |"]
    assert "Other grids" not in text

"""The command line: dict-valued settings in the forms the README documents."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from adaround_lightning.app.cli import _dict_override
from tests.helpers.cli import run_cli


@pytest.mark.parametrize(
    ("args", "section", "expected"),
    [
        (
            ["quant.layer_bits={features.0.0:8,classifier.*:6}"],
            ("quant", "layer_bits"),
            {"features.0.0": 8, "classifier.*": 6},
        ),
        (
            ["quant.layer_bits.features.0.0=8", "quant.layer_bits.classifier.1=4"],
            ("quant", "layer_bits"),
            {"features.0.0": 8, "classifier.1": 4},
        ),
        (
            ["recipe=custom", "data.root=/tmp", "model.kwargs={image_size:32}"],
            ("model", "kwargs"),
            {"image_size": 32},
        ),
    ],
)
def test_dict_settings_from_the_command_line(
    args: list[str], section: tuple[str, str], expected: dict, tmp_path: Path
) -> None:
    proc = run_cli([*args, "--cfg", "job"], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = yaml.safe_load(proc.stdout)
    assert config[section[0]][section[1]] == expected


def test_dict_entries_merge_into_a_recipe_s_dict(tmp_path: Path) -> None:
    proc = run_cli(["model.kwargs={dropout:0.3}", "--cfg", "job"], tmp_path, timeout=120)
    kwargs = yaml.safe_load(proc.stdout)["model"]["kwargs"]
    assert kwargs["dropout"] == 0.3 and kwargs["width_mult"] == 0.5  # the quickstart's own


def test_other_overrides_are_left_alone() -> None:
    for arg in ("quant.weight_bits=3", "+x=1", "~quant.exclude", "quant.exclude=[a]"):
        assert _dict_override(arg) == arg

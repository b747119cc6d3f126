"""docs/configuration.md states the defaults that the config groups really have."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from adaround_lightning.app.cli import CONFIG_DIR

README = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
# Default cells that describe rather than state a value (set by the recipe, required, ...).
DESCRIPTIVE = {"recipe", "—", "ImageNet"}


def _reference_rows() -> list[tuple[str, str]]:
    """``(key cell, default cell)`` of every row of the README's configuration reference."""
    text = README.read_text()
    section = text.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = (
            [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        )
        if len(cells) >= 3 and cells[0].startswith("`"):
            rows.append((cells[0], cells[1]))
    return rows


def _keys(cell: str) -> list[str]:
    """``a.b.c`` / ``.d`` -> ``["a.b.c", "a.b.d"]``: a leading dot shares the first parent."""
    names = re.findall(r"`([^`]+)`", cell)
    parent = names[0].rsplit(".", 1)[0]
    return [parent + name if name.startswith(".") else name for name in names]


def _select(cfg: Any, key: str) -> Any:
    node = OmegaConf.select(cfg, key, throw_on_missing=False, default=KeyError)
    assert node is not KeyError, f"README documents {key}, which the config does not have"
    return OmegaConf.to_container(node) if OmegaConf.is_config(node) else node


def test_readme_defaults_match_the_config_groups() -> None:
    # The blank recipe: the library's own defaults, which is what the reference documents.
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", ["recipe=custom", "data.root=/data"])
    root = yaml.safe_load((Path(CONFIG_DIR) / "config.yaml").read_text())
    group_defaults = {
        k: v for item in root["defaults"] if isinstance(item, dict) for k, v in item.items()
    }
    rows = _reference_rows()
    assert len(rows) > 30
    checked = 0
    for key_cell, default_cell in rows:
        keys = _keys(key_cell)
        if any("*" in key for key in keys):
            continue
        if keys[0] in group_defaults:  # a config group: its default choice in conf/config.yaml
            assert default_cell.split()[0].strip("`") == group_defaults[keys[0]], key_cell
            checked += 1
            continue
        defaults = [d.strip().strip("`") for d in default_cell.split(" / ")]
        if len(defaults) == 1:  # one value stated for all the row's keys
            defaults = defaults * len(keys)
        assert len(defaults) == len(keys), f"README row {key_cell}: one default per key"
        for key, default in zip(keys, defaults, strict=True):
            actual = _select(cfg, key)
            if default in DESCRIPTIVE:
                continue
            assert yaml.safe_load(default) == actual, f"README: {key} = {default}, config: {actual}"
            checked += 1
    assert checked > 25

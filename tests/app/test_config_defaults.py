"""The settings dataclasses are the one source of defaults; Hydra reads them as structured configs.

``conf/`` holds groups and recipes only: every key they set is a field of its dataclass, and the
composed default config is the dataclasses' defaults (except where the CLI differs on purpose).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from adaround_lightning.app.cli import CONFIG_DIR, recipes
from adaround_lightning.app.schema import check_overrides, schema_of
from adaround_lightning.app.settings import RunConfig, fingerprint, run_config_from
from adaround_lightning.core.errors import UserError
from adaround_lightning.data.sources import CalibrationConfig, DataConfig
from adaround_lightning.data.transforms import PreprocessConfig
from adaround_lightning.engine.adaround_config import AdaroundConfig
from adaround_lightning.engine.engine_config import EngineConfig
from adaround_lightning.export.run_dir import ExportConfig
from adaround_lightning.models.model_builder import ModelConfig
from adaround_lightning.quant.quant_config import QuantConfig

SECTIONS = {
    "adaround": AdaroundConfig,
    "engine": EngineConfig,
    "quant": QuantConfig,
    "model": ModelConfig,
    "data": DataConfig,
    "export": ExportConfig,
}
SETTINGS = [*SECTIONS.values(), CalibrationConfig, PreprocessConfig]

#: Where the CLI differs from Python on purpose: glibc's mallopt is opt-in from Python.
CLI_ONLY = {("engine", "reuse_host_memory"): True}


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def _compose(overrides: list[str]) -> Any:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides)


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_the_schema_has_every_field_with_its_default(cls: type) -> None:
    schema = OmegaConf.to_container(OmegaConf.structured(schema_of(cls)))
    assert schema == _plain(cls())


def test_yaml_restates_no_section_default() -> None:
    assert not (CONFIG_DIR / "adaround").exists() and not (CONFIG_DIR / "quant").exists()
    root = OmegaConf.load(CONFIG_DIR / "config.yaml")
    restated = {(s, k) for s in SECTIONS if s in root for k in root[s]}
    assert restated == set(CLI_ONLY)


def test_the_composed_default_is_the_dataclass_defaults_outside_the_recipe() -> None:
    cfg = OmegaConf.to_container(_compose(["recipe=custom", "model.name=mobilenet_v2"]))
    for (section, key), value in CLI_ONLY.items():
        assert cfg[section].pop(key) == value
    for section in ("adaround", "engine", "quant", "export"):
        defaults = _plain(SECTIONS[section]())
        for key in CLI_ONLY:
            defaults.pop(key[1], None) if key[0] == section else None
        assert cfg[section] == defaults, section


@pytest.mark.parametrize("recipe", recipes())
@pytest.mark.parametrize("data", sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml")))
def test_every_recipe_and_data_group_composes_against_the_schema(recipe: str, data: str) -> None:
    cfg = _compose([f"recipe={recipe}", f"data={data}"])
    values = OmegaConf.to_container(cfg)
    for section, cls in SECTIONS.items():  # no key the dataclass lacks
        assert set(values[section]) == {f.name for f in dataclasses.fields(cls)}
    assert isinstance(run_config_from({**values, "data": {}}), RunConfig)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["adaround.iters=many"], "could not be converted to Integer"),
        (["adaround.itres=100"], "unknown setting adaround.itres"),
        (["adaround.granularity=net"], "adaround.granularity must be one of block, layer"),
        (["-m", "quant.weight_bits=2,x"], "quant.weight_bits=2,x"),
        (["quant.per_channel=maybe"], "is not a valid bool"),
        (["++quant.layer_bits={features.0.0: eight}"], "could not be converted to Integer"),
        (["data.preprocess.mean=[0.5,x]"], "could not be converted to Float"),
        (["seed=-x"], "seed=-x"),
        (["adaround.cache_device=disk"], "adaround.cache_device is now engine.cache_device"),
    ],
)
def test_a_wrong_type_is_refused_when_the_command_line_is_read(
    argv: list[str], fragment: str
) -> None:
    with pytest.raises(UserError) as caught:
        check_overrides(argv)
    assert fragment in str(caught.value)


def test_right_values_free_dicts_and_hydra_flags_pass() -> None:
    check_overrides(
        [
            "-m",
            "--cfg",
            "job",
            "recipe=resnet18",
            "data=imagenet",
            "adaround.granularity=layer,block",
            "adaround.iters=range(10,30,10)",
            "adaround.lr=null",
            "adaround.beta_range=[10,2]",
            "trainer.devices=2",
            "+trainer.max_time=00:01:00:00",
            "++model.kwargs={width_mult: 0.5}",
            "hydra.run.dir=/tmp/x",
            "~data.eval_size",
        ]
    )


def test_hydra_itself_refuses_a_wrong_type() -> None:
    # The schema is Hydra's too: a value check_overrides never saw (a recipe file's) still fails.
    with pytest.raises(Exception, match=r"adaround\.iters=many"):
        _compose(["adaround.iters=many"])


def _readme_defaults() -> dict[str, str]:
    # | `adaround.iters` | 10000 | ... -> {"adaround.iters": "10000"}; rows of one key only.
    readme = (CONFIG_DIR.parent / "docs" / "configuration.md").read_text()
    section = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0].count("`") == 2 and "/" not in cells[0]:
            rows[cells[0].strip("`")] = cells[1].strip("`")
    return rows


def test_the_readme_table_gives_the_dataclass_defaults() -> None:
    cfg = OmegaConf.to_container(_compose(["recipe=custom"]))
    rows = _readme_defaults()
    checked = 0
    for key, shown in rows.items():
        section, _, name = key.partition(".")
        if section not in ("adaround", "engine", "quant", "export") or "." in name:
            continue
        value = cfg[section][name]
        if isinstance(value, list | dict):
            expected = str(value).replace("'", "").replace(".0", "")
        else:
            expected = {None: "null", True: "true", False: "false"}.get(value, value)
        assert shown in (str(expected), str(_plain(value))), f"README {key}: {shown} != {value}"
        checked += 1
    assert checked >= 30


def test_run_dirs_from_before_the_engine_section_and_the_typed_schema_still_resume() -> None:
    # Before: engine settings under adaround, floats as written (20); now: engine.*, typed (20.0).
    before = {"adaround": {"iters": 5, "steps_per_batch": 1, "beta_range": [20, 2]}, "seed": 0}
    now = {"adaround": {"iters": 5, "beta_range": [20.0, 2.0]}, "engine": {"steps_per_batch": 1}}
    assert fingerprint(before) == fingerprint({**now, "seed": 0})
    assert fingerprint(before) != fingerprint({**now, "engine": {"steps_per_batch": 2}, "seed": 0})

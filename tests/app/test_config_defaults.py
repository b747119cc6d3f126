"""Every YAML key is a field of its dataclass, and agrees with the dataclass's default.

The dataclasses are the one source of the defaults; the YAML group files restate them for the
command line (``--cfg job`` and ``--help`` show them), so they must not drift apart.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any

import pytest
import yaml

from adaround_lightning.data.sources import CalibrationConfig, DataConfig
from adaround_lightning.data.transforms import PreprocessConfig
from adaround_lightning.engine.adaround_config import AdaroundConfig
from adaround_lightning.export.run_dir import ExportConfig
from adaround_lightning.models.model_builder import ModelConfig
from adaround_lightning.quant.quant_config import QuantConfig

CONF = Path(__file__).resolve().parents[2] / "conf"

#: Where the CLI differs from Python on purpose: glibc's mallopt is opt-in from Python.
CLI_ONLY = {("adaround", "reuse_host_memory"): True}


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = _plain(f.default_factory())
    return out


CASES = [
    ("adaround", CONF / "adaround" / "default.yaml", AdaroundConfig, None),
    ("quant", CONF / "quant" / "default.yaml", QuantConfig, None),
    ("model", CONF / "model" / "torchvision.yaml", ModelConfig, None),
    ("export", CONF / "config.yaml", ExportConfig, "export"),
]


@pytest.mark.parametrize(("section", "path", "cls", "key"), CASES, ids=[c[0] for c in CASES])
def test_every_yaml_key_is_a_field_with_the_same_default(section, path, cls, key) -> None:
    values = yaml.safe_load(path.read_text())
    values = values[key] if key else values
    defaults = _defaults(cls)
    for name, value in values.items():
        assert name in defaults, f"{path.name}: {section}.{name} is not a field of {cls.__name__}"
        expected = CLI_ONLY.get((section, name), defaults[name])
        message = f"{section}.{name}: YAML {value!r}, dataclass {expected!r}"
        assert _plain(value) == expected, message


def test_the_data_group_keys_are_fields() -> None:
    for path in sorted((CONF / "data").glob("*.yaml")):
        values = yaml.safe_load(path.read_text())
        fields = {f.name for f in dataclasses.fields(DataConfig)}
        assert set(values) - {"defaults"} <= fields, path.name
        for nested, cls in (("calibration", CalibrationConfig), ("preprocess", PreprocessConfig)):
            known = {f.name for f in dataclasses.fields(cls)}
            assert set(values.get(nested) or {}) <= known, f"{path.name}: {nested}"

"""The whole run's settings as typed, validated dataclasses, built from a Hydra config."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from adaround_lightning.core.errors import UserError
from adaround_lightning.data.sources import CalibrationConfig, DataConfig
from adaround_lightning.data.transforms import PreprocessConfig
from adaround_lightning.engine.adaround_config import AdaroundConfig
from adaround_lightning.engine.engine_config import EngineConfig
from adaround_lightning.export.export_config import check_target
from adaround_lightning.export.run_dir import ExportConfig
from adaround_lightning.models.model_builder import ModelConfig
from adaround_lightning.quant.quant_config import QuantConfig

__all__ = ["ExportConfig", "RunConfig", "fingerprint", "run_config_from"]


@dataclass
class RunConfig:
    """Everything one run needs.

    Attributes:
        name: The recipe's name.
        model: Which network.
        data: Calibration and evaluation data.
        quant: Bits and layer selection.
        adaround: The algorithm's settings (what is optimised).
        engine: How the calibration runs (cache, batching of passes, step scheduling).
        export: What is exported besides the quantized state_dict.
        trainer: Keyword arguments of each Lightning ``Trainer`` (accelerator, devices, precision).
        seed: Global seed (``lightning.seed_everything``).
        output_dir: Where outputs go (None: Hydra's run dir, else the working directory).
        resume: A run dir whose calibration continues after its last finished layer.
    """

    name: str
    model: ModelConfig
    data: DataConfig
    quant: QuantConfig
    adaround: AdaroundConfig
    engine: EngineConfig = field(default_factory=EngineConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    output_dir: str | None = None
    resume: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"seed must be a non-negative integer, got {self.seed!r}")
        check_target(
            self.export, self.quant.act_bits, self.quant.act_symmetric, self.quant.group_size
        )
        if not self.quant.weight_symmetric and (self.export.onnx or self.export.verify):
            raise UserError(
                "quant.weight_symmetric=false is exported as compressed-tensors and "
                "quantized_weights.safetensors (with zero points) only: set export.onnx=false "
                "export.verify=false (the causal_lm recipe does)"
            )


def _build(cls: type, section: str, values: Any) -> Any:
    if not isinstance(values, dict):
        raise UserError(f"{section} must be a mapping, got {values!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(
            f"unknown setting {section}.{unknown[0]}; "
            f"valid keys of {section}: {', '.join(sorted(known))}"
        )
    try:
        return cls(**values)
    except UserError:
        raise
    except (TypeError, ValueError) as error:
        raise UserError(str(error)) from None


#: adaround settings that never change the integers (where the cache lives, how it is filled,
#: which settled elements a step skips),
#: and those that do only away from a default that runs before them did not have.
_PLACEMENT_KEYS = ("cache_device", "stream", "reuse_host_memory", "skip_settled")
_LATER_DEFAULTS = {
    "cache_budget_gb": None,
    "cache_dtype": "float32",
    "channels_last": True,
    "blocks": [],
    "learn_scale": False,
    "scale_lr": 1e-3,
    "straight_through": False,
    "fisher": False,
    "fisher_damping": 1.0,
    "refine_bits": [],
    "refine_steps": None,
    "refine_lr": 0.01,
    "refine_block_weight": 0.1,
}


def _result_settings(adaround: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in adaround.items()
        if key not in _PLACEMENT_KEYS
        and not (key in _LATER_DEFAULTS and value == _LATER_DEFAULTS[key])
    }


def _canonical(value: Any) -> Any:
    # 20.0 and 20 are one setting: the typed schema writes a float field's 20 as 20.0, and run
    # dirs from before it was typed must still resume.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    return value


#: Settings added after run dirs existed, with the value that reproduces the behaviour before
#: them: at that value they are left out of the fingerprint, so those run dirs resume.
_ADDED_SETTINGS: dict[tuple[str, str], Any] = {
    ("quant", "act_symmetric"): False,
    ("quant", "group_size"): None,
    ("quant", "average_bits"): None,
    ("quant", "max_size_mb"): None,
    ("quant", "candidate_bits"): [2, 3, 4, 8],
    ("quant", "weight_symmetric"): True,
    ("quant", "quantize_lm_head"): False,
    ("quant", "quantize_embeddings"): False,
    ("model", "task"): "classification",
    ("data", "text"): None,
    ("data", "eval_text"): None,
    ("data", "tokenizer"): None,
    ("data", "seq_len"): 128,
}


def fingerprint(cfg: DictConfig | dict[str, Any]) -> str:
    """Hash of the settings that decide the calibration's result.

    Output location, resume, export and evaluation-only settings are left out, so a resumed run
    may change them; so are the cache's placement and streaming, which never change the
    integers (a run dir from before those settings existed resumes).

    Example:
        >>> fingerprint({"quant": {"weight_bits": 4}}) == fingerprint({"quant": {"weight_bits": 4}})
        True
    """
    values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    assert isinstance(values, dict)
    kept = {k: v for k, v in values.items() if k not in ("output_dir", "resume", "export", "hydra")}
    if isinstance(kept.get("model"), dict) and kept["model"].get("source") == "torchvision":
        kept["model"] = {k: v for k, v in kept["model"].items() if k != "source"}  # as before it
    if isinstance(kept.get("data"), dict):
        kept["data"] = {
            k: v
            for k, v in kept["data"].items()
            if k not in ("eval_size", "eval_split", "num_workers")
        }
    for (section, key), default in _ADDED_SETTINGS.items():
        values_of = kept.get(section)
        if isinstance(values_of, dict) and values_of.get(key, default) == default:
            kept[section] = {k: v for k, v in values_of.items() if k != key}
    # The engine's settings were adaround.* before they had a section: hashed there, run dirs
    # from before the split resume.
    adaround = {**(kept.get("adaround") or {}), **(kept.pop("engine", None) or {})}
    if adaround:
        kept["adaround"] = _result_settings(adaround)
    text = json.dumps(_canonical(kept), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_config_from(cfg: DictConfig | dict[str, Any]) -> RunConfig:
    """Resolve and validate a composed config.

    Raises:
        UserError: On a missing section, an unknown key or an invalid value.

    Example:
        >>> run_config_from({"name": "x", "model": {"name": "resnet18"}, "data": {},
        ...                  "quant": {"weight_bits": 3}, "adaround": {}}).quant.weight_bits
        3
    """
    if isinstance(cfg, DictConfig):
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise UserError(f"{missing[0]} is not set: pass {missing[0]}=VALUE on the command line")
        try:
            values = OmegaConf.to_container(cfg, resolve=True)
        except OmegaConfBaseException as error:
            raise UserError(f"the config does not resolve: {str(error).splitlines()[0]}") from None
    else:
        values = dict(cfg)
    assert isinstance(values, dict)
    for section in ("model", "data", "quant", "adaround"):
        if section not in values:
            raise UserError(
                f"the config has no '{section}' section; pick a recipe with recipe=NAME"
            )
    data = dict(values["data"])
    data["calibration"] = _build(CalibrationConfig, "data.calibration", data.get("calibration", {}))
    data["preprocess"] = _build(PreprocessConfig, "data.preprocess", data.get("preprocess", {}))
    adaround = dict(values["adaround"])
    if "beta_range" in adaround:
        adaround["beta_range"] = tuple(adaround["beta_range"])
    return RunConfig(
        name=str(values.get("name", "custom")),
        model=_build(ModelConfig, "model", values["model"]),
        data=_build(DataConfig, "data", data),
        quant=_build(QuantConfig, "quant", values["quant"]),
        adaround=_build(AdaroundConfig, "adaround", adaround),
        engine=_build(EngineConfig, "engine", values.get("engine") or {}),
        export=_build(ExportConfig, "export", values.get("export") or {}),
        trainer=dict(values.get("trainer") or {}),
        seed=values.get("seed", 0),
        output_dir=values.get("output_dir"),
        resume=values.get("resume"),
    )

"""What every run does, whatever it calibrates: the run dir, its config, loggers, results.

Shared by the PyTorch run (:mod:`~.run`) and the ONNX run (:mod:`~.run_onnx`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from adaround_lightning.app.report import write_report
from adaround_lightning.app.settings import RunConfig, run_config_from
from adaround_lightning.core.atomic import atomic_write_text
from adaround_lightning.core.distributed import ProcessContext
from adaround_lightning.core.errors import UserError
from adaround_lightning.engine.fit.trainer import (
    process_context,
    quiet_lightning,
    trainer_kwargs_with_defaults,
)
from adaround_lightning.export.run_dir import RESULTS_FILE

__all__ = [
    "CHECKPOINT_DIR",
    "RESULTS_FILE",
    "output_dir_of",
    "prepare_run",
    "quant_summary",
    "run_loggers",
    "task_overrides",
    "write_results_file",
]

#: Per-layer progress checkpoints inside the run dir (:mod:`~.calibration.checkpoint`).
CHECKPOINT_DIR = "checkpoints"


def output_dir_of(settings: RunConfig) -> Path:
    """``resume`` or ``output_dir`` if set, else Hydra's run dir (in a Hydra app) or the cwd."""
    if settings.resume:
        return Path(settings.resume)
    if settings.output_dir:
        return Path(settings.output_dir)
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):
        return Path.cwd()


def run_loggers(out_dir: Path) -> list[Logger]:
    """One run, one log dir: Lightning's CSV logger, plus TensorBoard when it is installed.

    Every layer's fit uses these same loggers; metrics are prefixed with the layer's name.
    """
    loggers: list[Logger] = [CSVLogger(save_dir=str(out_dir), name="logs", version="")]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        loggers.append(TensorBoardLogger(save_dir=str(out_dir), name="logs", version="tensorboard"))
    return loggers


def _is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except (ImportError, ValueError):
        return False


def task_overrides() -> list[str]:
    """The command-line overrides of this Hydra job (empty outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        return []


def _write_config(cfg: DictConfig | dict[str, Any], out_dir: Path) -> None:
    """``config.yaml`` (resolved) in a fresh or resumed run dir; a stale ``results.json`` goes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    values = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(values)))
    results_path = out_dir / RESULTS_FILE
    if results_path.exists():
        results_path.unlink()  # a stale results.json must never describe this run


def prepare_run(cfg: DictConfig | dict[str, Any]) -> tuple[RunConfig, Path, ProcessContext]:
    """Validate the settings, prepare the run dir and seed: what every kind of run does first.

    Raises:
        UserError: On a bad setting, a ``resume`` that is not a run dir, or multirun with DDP.
    """
    settings = run_config_from(cfg)
    out_dir = output_dir_of(settings)
    if settings.resume and not (out_dir / "config.yaml").is_file():
        raise UserError(
            f"resume={settings.resume} is not a run dir (no config.yaml): pass a run dir"
        )
    process = process_context(trainer_kwargs_with_defaults(settings.trainer))
    if process.world_size > 1 and _is_multirun():
        raise UserError(
            "Hydra multirun with DDP is unsupported upstream: run each job as its own command, "
            "or sweep with trainer.devices=1 (see the README)"
        )
    if process.is_main:  # under DDP, only rank 0 writes
        _write_config(cfg, out_dir)
    with quiet_lightning():
        L.seed_everything(settings.seed, verbose=False)
    return settings, out_dir, process


def quant_summary(settings: RunConfig) -> dict[str, Any]:
    """The quantization settings that ``results.json`` records."""
    quant, config = settings.quant, settings.adaround
    return {
        "weight_bits": quant.weight_bits,
        "per_channel": quant.per_channel,
        "first_layer_bits": quant.first_layer_bits,
        "last_layer_bits": quant.last_layer_bits,
        "scale_method": str(quant.scale_method),
        "act_bits": quant.act_bits,
        "act_observer": str(quant.act_observer),
        "act_symmetric": quant.act_symmetric,
        "act_in_loop": config.act_in_loop,
        "granularity": str(config.granularity),
        "bias_correction": config.bias_correction,
        "group_size": quant.group_size,
        "weight_symmetric": quant.weight_symmetric,
        "quantize_lm_head": quant.quantize_lm_head,
        "quantize_embeddings": quant.quantize_embeddings,
    }


def write_results_file(results: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """``report.html`` and, last, ``results.json``; returns ``results`` with the report's name."""
    results["outputs"]["report"] = write_report(results, out_dir).name
    atomic_write_text(out_dir / RESULTS_FILE, json.dumps(results, indent=2))
    return results

"""One calibration run, end to end, in phases: setup, calibrate, export, evaluate, write results.

The Hydra entry point (:mod:`adaround_lightning.app.cli`) is a thin wrapper over :func:`run`, which
tests call directly with a composed config.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from adaround_lightning import export
from adaround_lightning.app.evaluate import evaluate, evaluate_with_onnx
from adaround_lightning.app.models import build_model
from adaround_lightning.app.report import write_report
from adaround_lightning.app.settings import RunConfig, fingerprint, run_config_from
from adaround_lightning.calibration.api import adaround
from adaround_lightning.calibration.records import AdaroundResult
from adaround_lightning.calibration.trainer import (
    process_context,
    quiet_lightning,
    trainer_kwargs_with_defaults,
)
from adaround_lightning.core.atomic import atomic_write_text
from adaround_lightning.core.distributed import ProcessContext
from adaround_lightning.core.errors import UserError
from adaround_lightning.data.sources import calibration_images, evaluation_dataset

__all__ = [
    "RunSetup",
    "calibrate",
    "evaluate_models",
    "output_dir_of",
    "run",
    "setup",
    "summary_table",
    "write_results",
]

log = logging.getLogger(__name__)

#: Per-layer progress checkpoints inside the run dir (:mod:`~.calibration.checkpoint`).
CHECKPOINT_DIR = "checkpoints"
#: Written last: a run dir is finished when this file says so.
RESULTS_FILE = "results.json"


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


def _task_overrides() -> list[str]:
    """The command-line overrides of this Hydra job (empty outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        return []


def summary_table(results: dict[str, Any]) -> str:
    """The headline table: FP32 / round-to-nearest / AdaRound accuracy.

    The round-to-nearest row is the weights alone, on AdaRound's grids: it never has the bias
    correction that AdaRound's row has by default, and its footnote says so.

    Example:
        >>> print(summary_table({"fp32": {"top1": 90.0}, "nearest": {"top1": 50.0},
        ...                      "adaround": {"top1": 85.0}}))  # doctest: +NORMALIZE_WHITESPACE
        model               top1
        FP32               90.00
        round-to-nearest*  50.00
        AdaRound           85.00
        * weights only: no bias correction
    """
    keys = [k for k in ("top1", "top5") if k in results["fp32"]]
    lines = [f"{'model':<17}" + "".join(f"{k:>7}" for k in keys)]
    rows = (("FP32", "fp32"), ("round-to-nearest*", "nearest"), ("AdaRound", "adaround"))
    for label, key in rows:
        lines.append(f"{label:<17}" + "".join(f"{results[key][k]:>7.2f}" for k in keys))
    lines.append("* weights only: no bias correction")
    return "\n".join(lines)


@dataclass(frozen=True)
class RunSetup:
    """What :func:`setup` prepares for the other phases of a run.

    Attributes:
        cfg: The composed config, as given.
        settings: The validated settings.
        out_dir: The run dir.
        process: This process's device and rank.
        model: The user's network (float, unchanged).
        images: The calibration images ``(N, ...)`` on the CPU.
        eval_set: The evaluation dataset.
    """

    cfg: DictConfig | dict[str, Any]
    settings: RunConfig
    out_dir: Path
    process: ProcessContext
    model: nn.Module
    images: torch.Tensor
    eval_set: Dataset


def _write_config(cfg: DictConfig | dict[str, Any], out_dir: Path) -> None:
    """``config.yaml`` (resolved) in a fresh or resumed run dir; a stale ``results.json`` goes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    values = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(values)))
    results_path = out_dir / RESULTS_FILE
    if results_path.exists():
        results_path.unlink()  # a stale results.json must never describe this run


def setup(cfg: DictConfig | dict[str, Any]) -> RunSetup:
    """Validate the settings, prepare the run dir, seed, build the model and load the data.

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
    model = build_model(settings.model)
    images = calibration_images(settings.data)
    eval_set = evaluation_dataset(settings.data)
    log.info(
        "calibration: %d images %s; evaluation: %d images",
        images.shape[0],
        tuple(images.shape[1:]),
        len(eval_set),  # type: ignore[arg-type]
    )
    return RunSetup(cfg, settings, out_dir, process, model, images, eval_set)


def calibrate(run_setup: RunSetup) -> AdaroundResult:
    """AdaRound on the run's model, checkpointed into the run dir (resumable)."""
    settings, out_dir = run_setup.settings, run_setup.out_dir
    return adaround(
        run_setup.model,
        run_setup.images,
        settings.quant,
        settings.adaround,
        settings.trainer,
        checkpoint=out_dir / CHECKPOINT_DIR,
        checkpoint_tag=fingerprint(run_setup.cfg),
        loggers=run_loggers(out_dir) if run_setup.process.is_main else None,
    )


def evaluate_models(
    run_setup: RunSetup, result: AdaroundResult, exported: dict[str, Any]
) -> dict[str, Any]:
    """Top-1/top-5 of FP32, round-to-nearest and AdaRound (and of the ONNX file, if written).

    The ONNX parity figures go into ``exported["onnx"]``.
    """
    settings, eval_set = run_setup.settings, run_setup.eval_set
    device, num_classes = run_setup.process.device, settings.model.num_classes
    batch = settings.data.batch_size
    accuracy = {
        "fp32": evaluate(run_setup.model, eval_set, num_classes, device, batch),
        "nearest": evaluate(result.nearest_model(), eval_set, num_classes, device, batch),
    }
    if settings.export.onnx:
        # One pass gives both PyTorch's and onnxruntime's accuracy of the calibrated model.
        accuracy["adaround"], exported["onnx"] = evaluate_with_onnx(
            run_setup.out_dir / export.ONNX_FILE, result.model, eval_set, num_classes, device, batch
        )
    else:
        accuracy["adaround"] = evaluate(result.model, eval_set, num_classes, device, batch)
    return accuracy


def _quant_summary(settings: RunConfig) -> dict[str, Any]:
    quant, config = settings.quant, settings.adaround
    return {
        "weight_bits": quant.weight_bits,
        "per_channel": quant.per_channel,
        "first_layer_bits": quant.first_layer_bits,
        "last_layer_bits": quant.last_layer_bits,
        "scale_method": str(quant.scale_method),
        "act_bits": quant.act_bits,
        "act_observer": str(quant.act_observer),
        "act_in_loop": config.act_in_loop,
        "granularity": str(config.granularity),
        "bias_correction": config.bias_correction,
    }


def write_results(
    run_setup: RunSetup,
    result: AdaroundResult,
    accuracy: dict[str, Any],
    exported: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    """``report.html`` and, last, ``results.json`` (``"finished": true``); returns the latter."""
    settings, images = run_setup.settings, run_setup.images
    results: dict[str, Any] = {
        "recipe": settings.name,
        "overrides": _task_overrides(),
        "model": settings.model.name,
        **accuracy,
        "quant": _quant_summary(settings),
        "input_shape": list(images.shape[1:]),
        "calibration_images": int(images.shape[0]),
        "eval_images": len(run_setup.eval_set),  # type: ignore[arg-type]
        "layers": [report.to_dict() for report in result.layers],
        "skipped": result.skipped,
        "coverage": result.coverage.to_dict() if result.coverage is not None else None,
        "cache": result.cache.to_dict() if result.cache is not None else None,
        "calibration_seconds": round(result.seconds, 3),
        "seconds": round(seconds, 3),
        **exported,
        "finished": True,
    }
    results["outputs"]["report"] = write_report(results, run_setup.out_dir).name
    atomic_write_text(run_setup.out_dir / RESULTS_FILE, json.dumps(results, indent=2))
    return results


def run(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Calibrate the configured model and write the outputs: setup, calibrate, export, evaluate.

    Writes, in the output directory: ``config.yaml`` (resolved), the exports of
    :func:`~adaround_lightning.export.run_dir.export_run` and, last, ``results.json``
    (``"finished": true``).

    Args:
        cfg: A composed config (``conf/config.yaml`` plus a recipe and overrides).

    Returns:
        The content of ``results.json`` (an empty dict on DDP ranks other than 0).

    Example:
        >>> from hydra import compose, initialize_config_dir  # doctest: +SKIP
        >>> with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):  # doctest: +SKIP
        ...     results = run(compose("config", ["adaround.iters=10"]))
    """
    start = time.perf_counter()
    run_setup = setup(cfg)
    result = calibrate(run_setup)
    if not run_setup.process.is_main:
        return {}  # rank 0 exports, evaluates and writes
    exported = export.export_run(
        result, run_setup.out_dir, run_setup.images[:2], run_setup.settings.export
    )
    accuracy = evaluate_models(run_setup, result, exported)
    if run_setup.settings.export.verify:
        exported["grid_check"] = export.verify_grid(run_setup.out_dir, exported.get("onnx"))
    return write_results(run_setup, result, accuracy, exported, time.perf_counter() - start)

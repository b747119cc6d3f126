"""One calibration run, end to end: build, calibrate, evaluate, write outputs.

The Hydra entry point (:mod:`adaround_lightning.cli`) is a thin wrapper over :func:`run`, which
tests call directly with a composed config.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from adaround_lightning import export
from adaround_lightning.atomic import atomic_torch_save, atomic_write, atomic_write_text
from adaround_lightning.data.sources import calibration_images, evaluation_dataset
from adaround_lightning.distributed import process_context
from adaround_lightning.driver import (
    AdaroundResult,
    adaround,
    quiet_lightning,
    trainer_kwargs_with_defaults,
)
from adaround_lightning.errors import UserError
from adaround_lightning.evaluate import evaluate, evaluate_with_onnx
from adaround_lightning.models import build_model
from adaround_lightning.report import write_report
from adaround_lightning.settings import ExportConfig, RunConfig, fingerprint, run_config_from

__all__ = ["atomic_torch_save", "atomic_write_text", "output_dir_of", "run", "summary_table"]

log = logging.getLogger(__name__)

#: Per-layer progress checkpoints inside the run dir (see :mod:`adaround_lightning.checkpoint`).
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


def _task_overrides() -> list[str]:
    """The command-line overrides of this Hydra job (empty outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        return []


def summary_table(results: dict[str, Any]) -> str:
    """The headline table: FP32 / round-to-nearest / AdaRound accuracy.

    Example:
        >>> print(summary_table({"fp32": {"top1": 90.0}, "nearest": {"top1": 50.0},
        ...                      "adaround": {"top1": 85.0}}))  # doctest: +NORMALIZE_WHITESPACE
        model              top1
        FP32              90.00
        round-to-nearest  50.00
        AdaRound          85.00
    """
    keys = [k for k in ("top1", "top5") if k in results["fp32"]]
    lines = [f"{'model':<16}" + "".join(f"{k:>7}" for k in keys)]
    for label, key in (("FP32", "fp32"), ("round-to-nearest", "nearest"), ("AdaRound", "adaround")):
        lines.append(f"{label:<16}" + "".join(f"{results[key][k]:>7.2f}" for k in keys))
    return "\n".join(lines)


def export_run(
    result: AdaroundResult, out_dir: Path, example_input: torch.Tensor, config: ExportConfig
) -> dict[str, Any]:
    """Write the quantized model and its integer forms to ``out_dir`` (each file atomically).

    Returns:
        ``{"outputs": {kind: file name}}`` for ``results.json``.
    """
    layers = export.quantized_layers(result.quantizers)
    outputs = {"config": "config.yaml", "quantized_model": export.MODEL_FILE}
    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    atomic_torch_save(out_dir / export.MODEL_FILE, state)
    atomic_write(
        out_dir / export.WEIGHTS_FILE,
        lambda tmp: export.save_quantized_weights(Path(tmp), layers, result.act_quantizers),
    )
    outputs["quantized_weights"] = export.WEIGHTS_FILE
    encodings = export.aimet_encodings(layers, result.act_quantizers)
    atomic_write_text(out_dir / export.ENCODINGS_FILE, json.dumps(encodings, indent=1))
    outputs["encodings"] = export.ENCODINGS_FILE
    atomic_torch_save(out_dir / export.STATE_FILE, export.quantizer_states(result.quantizers))
    outputs["adaround_state"] = export.STATE_FILE
    if config.onnx:
        model = copy.deepcopy(result.model).cpu()
        atomic_write(
            out_dir / export.ONNX_FILE,
            lambda tmp: export.export_onnx(model, layers, example_input, Path(tmp), config.opset),
        )
        outputs["onnx"] = export.ONNX_FILE
    return {"outputs": outputs}


def run(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Calibrate the configured model and write the outputs.

    Writes, in the output directory: ``config.yaml`` (resolved), the exports of
    :func:`export_run` and, last, ``results.json`` (``"finished": true``).

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
    settings = run_config_from(cfg)
    out_dir = output_dir_of(settings)
    if settings.resume and not (out_dir / "config.yaml").is_file():
        raise UserError(
            f"resume={settings.resume} is not a run dir (no config.yaml): pass a run dir"
        )
    context = process_context(trainer_kwargs_with_defaults(settings.trainer))
    if context.world_size > 1 and _is_multirun():
        raise UserError(
            "Hydra multirun with DDP is unsupported upstream: run each job as its own command, "
            "or sweep with trainer.devices=1 (see the README)"
        )
    results_path = out_dir / "results.json"
    if context.is_main:  # under DDP, only rank 0 writes
        out_dir.mkdir(parents=True, exist_ok=True)
        resolved = OmegaConf.to_yaml(
            OmegaConf.create(
                cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
            )
        )
        atomic_write_text(out_dir / "config.yaml", resolved)
        if results_path.exists():
            results_path.unlink()  # a stale results.json must never describe this run
    with quiet_lightning():
        L.seed_everything(settings.seed, verbose=False)

    model = build_model(settings.model)
    images = calibration_images(settings.data)
    eval_set = evaluation_dataset(settings.data)
    log.info(
        "calibration: %d images %s; evaluation: %d images",
        images.shape[0],
        tuple(images.shape[1:]),
        len(eval_set),
    )  # type: ignore[arg-type]

    result = adaround(
        model,
        images,
        settings.quant,
        settings.adaround,
        settings.trainer,
        checkpoint=out_dir / CHECKPOINT_DIR,
        checkpoint_tag=fingerprint(cfg),
        loggers=run_loggers(out_dir) if context.is_main else None,
    )
    if not context.is_main:
        return {}  # rank 0 evaluates and writes

    device = context.device
    num_classes = settings.model.num_classes
    batch = settings.data.batch_size
    exported = export_run(result, out_dir, images[:2], settings.export)
    accuracy = {
        "fp32": evaluate(model, eval_set, num_classes, device, batch),
        "nearest": evaluate(result.nearest_model(), eval_set, num_classes, device, batch),
    }
    if settings.export.onnx:
        # One pass gives both PyTorch's and onnxruntime's accuracy of the calibrated model.
        accuracy["adaround"], exported["onnx"] = evaluate_with_onnx(
            out_dir / export.ONNX_FILE, result.model, eval_set, num_classes, device, batch
        )
    else:
        accuracy["adaround"] = evaluate(result.model, eval_set, num_classes, device, batch)
    if settings.export.verify:
        exported["grid_check"] = export.verify_grid(out_dir)
    results: dict[str, Any] = {
        "recipe": settings.name,
        "overrides": _task_overrides(),
        "model": settings.model.name,
        **accuracy,
        "quant": {
            "weight_bits": settings.quant.weight_bits,
            "per_channel": settings.quant.per_channel,
            "first_layer_bits": settings.quant.first_layer_bits,
            "last_layer_bits": settings.quant.last_layer_bits,
            "scale_method": settings.quant.scale_method,
            "act_bits": settings.quant.act_bits,
            "act_observer": settings.quant.act_observer,
            "act_in_loop": settings.adaround.act_in_loop,
            "granularity": settings.adaround.granularity,
            "bias_correction": settings.adaround.bias_correction,
        },
        "input_shape": list(images.shape[1:]),
        "calibration_images": int(images.shape[0]),
        "eval_images": len(eval_set),  # type: ignore[arg-type]
        "layers": [report.to_dict() for report in result.layers],
        "skipped": result.skipped,
        "calibration_seconds": round(result.seconds, 3),
        "seconds": round(time.perf_counter() - start, 3),
        **exported,
        "finished": True,
    }
    results["outputs"]["report"] = write_report(results, out_dir).name
    atomic_write_text(results_path, json.dumps(results, indent=2))
    return results

"""One calibration run, end to end, in phases: setup, calibrate, export, evaluate, write results.

The Hydra entry point (:mod:`adaround_lightning.app.cli`) is a thin wrapper over :func:`run`, which
tests call directly with a composed config.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset

from adaround_lightning import export
from adaround_lightning.api import adaround
from adaround_lightning.app.agreement import onnx_parity, output_agreement
from adaround_lightning.app.evaluate import evaluate, evaluate_with_onnx
from adaround_lightning.app.evaluate_onnx import evaluate_onnx_models
from adaround_lightning.app.perplexity import perplexity
from adaround_lightning.app.phases import (
    CHECKPOINT_DIR,
    RESULTS_FILE,
    output_dir_of,
    prepare_run,
    quant_summary,
    run_loggers,
    task_overrides,
    write_results_file,
)
from adaround_lightning.app.settings import RunConfig, fingerprint
from adaround_lightning.core.distributed import ProcessContext
from adaround_lightning.core.environment import environment_record
from adaround_lightning.data.sources import calibration_images, evaluation_dataset
from adaround_lightning.engine.records.results import CalibrationResult, calibration_record
from adaround_lightning.export.compressed_tensors import (
    COMPRESSED_DIR,
    load_compressed_tensors,
    save_compressed_tensors,
)
from adaround_lightning.models.model_builder import build_model
from adaround_lightning.models.preprocessing import weights_preprocessing
from adaround_lightning.onnx_frontend.onnx_result import OnnxAdaroundResult
from adaround_lightning.torch_frontend.torch_result import AdaroundResult

__all__ = [
    "CHECKPOINT_DIR",
    "RESULTS_FILE",
    "RunSetup",
    "calibrate",
    "evaluate_models",
    "output_dir_of",
    "prepare_run",
    "quant_summary",
    "run",
    "run_loggers",
    "setup",
    "summary_table",
    "task_overrides",
    "write_results",
    "write_results_file",
]

log = logging.getLogger(__name__)


def summary_table(results: dict[str, Any]) -> str:
    """The headline table: FP32 / round-to-nearest / AdaRound accuracy.

    The round-to-nearest row is the weights alone, on AdaRound's grids: it never has the bias
    correction that AdaRound's row has by default, and its footnote says so.

    Example:
        >>> print(summary_table({"fp32": {"top1": 90.0}, "nearest": {"top1": 50.0},
        ...                      "adaround": {"top1": 85.0}}))  # doctest: +NORMALIZE_WHITESPACE
        model                     top1
        FP32                     90.00
        round-to-nearest*        50.00
        AdaRound                 85.00
        * weights only: no bias correction
    """
    if "fp32" not in results:  # no evaluation set: agreement with the float outputs
        agreement = results.get("agreement", {})
        return (
            "\n".join(
                f"{label:<17} top-1 agreement with FP32 {row['top1_agreement']:6.2f}%, "
                f"relative output error {row['relative_error']:.4f}"
                for label, row in (
                    ("round-to-nearest", agreement.get("nearest")),
                    ("AdaRound", agreement.get("adaround")),
                )
                if row
            )
            or "no evaluation set"
        )
    keys = [k for k in ("top1", "top5", "perplexity") if k in results["fp32"]]
    lines = [f"{'model':<19}" + "".join(f"{k:>11}" for k in keys)]
    rows = (("FP32", "fp32"), ("round-to-nearest*", "nearest"), ("AdaRound", "adaround"))
    if "compressed_tensors" in results:  # a language model's exported checkpoint, reloaded
        rows += (("compressed-tensors", "compressed_tensors"),)
    for label, key in rows:
        lines.append(f"{label:<19}" + "".join(f"{results[key][k]:>11.2f}" for k in keys))
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
        model: The user's network (float, unchanged), or the path of its ONNX file.
        images: The calibration images ``(N, ...)`` on the CPU.
        eval_set: The evaluation dataset.
    """

    cfg: DictConfig | dict[str, Any]
    settings: RunConfig
    out_dir: Path
    process: ProcessContext
    model: nn.Module | str
    images: torch.Tensor
    eval_set: Dataset | None


def _preprocess_as_trained(settings: RunConfig, model: nn.Module) -> None:
    """Resize, crop, mean and std of the model's pretrained weights, unless given explicitly."""
    trained = weights_preprocessing(settings.model, model)
    if trained is None:
        return
    given = {o.split("=", 1)[0].rsplit(".", 1)[-1] for o in task_overrides() if "preprocess." in o}
    kept = {key: value for key, value in trained.items() if key not in given}
    settings.data.preprocess = dataclasses.replace(settings.data.preprocess, **kept)
    log.info(
        "preprocessing of %s's pretrained weights: %s%s",
        settings.model.name,
        ", ".join(f"{key} {value}" for key, value in kept.items()),
        f" (data.preprocess.{', .'.join(sorted(given))} as given)" if given else "",
    )


def setup(cfg: DictConfig | dict[str, Any]) -> RunSetup:
    """Validate the settings, prepare the run dir, seed, build the model and load the data.

    Raises:
        UserError: On a bad setting, a ``resume`` that is not a run dir, or multirun with DDP.
    """
    settings, out_dir, process = prepare_run(cfg)
    onnx_path = settings.model.onnx
    model = str(onnx_path) if onnx_path else build_model(settings.model)
    if not onnx_path:
        _preprocess_as_trained(settings, model)
    images = calibration_images(settings.data)
    eval_set = evaluation_dataset(settings.data)
    log.info(
        "%s: calibration: %d images %s; evaluation: %d images",
        f"model.onnx={onnx_path}" if onnx_path else settings.model.name,
        images.shape[0],
        tuple(images.shape[1:]),
        len(eval_set) if eval_set is not None else 0,  # type: ignore[arg-type]
    )
    return RunSetup(cfg, settings, out_dir, process, model, images, eval_set)


def calibrate(run_setup: RunSetup) -> CalibrationResult:
    """AdaRound on the run's model, checkpointed into the run dir (resumable).

    :func:`adaround` takes a PyTorch network or the path of an ONNX file.
    """
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
        engine=settings.engine,
    )


def _agreement_only(
    run_setup: RunSetup, result: CalibrationResult, exported: dict[str, Any]
) -> dict[str, Any]:
    """No labels: the quantized outputs against the float ones on the calibration images."""
    if not isinstance(result, AdaroundResult) or not isinstance(run_setup.model, nn.Module):
        log.info("no evaluation set (data.eval_split=null): no accuracy for the ONNX path")
        return {}
    images, device = run_setup.images, run_setup.process.device
    batch = run_setup.settings.data.batch_size
    quantized = {"nearest": result.nearest_model(), "adaround": result.model}
    agreement = output_agreement(run_setup.model, quantized, images, device, batch)
    if "onnx" in exported.get("outputs", {}):
        path = run_setup.out_dir / export.ONNX_FILE
        exported["onnx"] = onnx_parity(path, copy.deepcopy(result.model), images[:64])
    log.info(
        "no evaluation set: AdaRound agrees with FP32 on %.2f%% of top-1 (round-to-nearest "
        "%.2f%%), relative output error %.4f, on the %d calibration images",
        agreement["adaround"]["top1_agreement"],
        agreement["nearest"]["top1_agreement"],
        agreement["adaround"]["relative_error"],
        len(images),
    )
    return {"agreement": agreement}


def evaluate_models(
    run_setup: RunSetup, result: CalibrationResult, exported: dict[str, Any]
) -> dict[str, Any]:
    """Top-1/top-5 of FP32, round-to-nearest and AdaRound (and of the ONNX file, if written).

    The ONNX parity figures go into ``exported["onnx"]``. An ONNX-path run is evaluated with
    onnxruntime throughout.
    """
    settings, eval_set = run_setup.settings, run_setup.eval_set
    device, num_classes = run_setup.process.device, settings.model.num_classes
    batch = settings.data.batch_size
    if eval_set is None:
        return _agreement_only(run_setup, result, exported)
    if settings.model.task == "causal_lm":
        return evaluate_language_model(run_setup, result, exported)
    if isinstance(result, OnnxAdaroundResult):
        path = run_setup.out_dir / export.ONNX_FILE
        accuracy, exported["onnx"] = evaluate_onnx_models(
            result, path, eval_set, num_classes, batch
        )
        return accuracy
    assert isinstance(result, AdaroundResult) and isinstance(run_setup.model, nn.Module)
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


def evaluate_language_model(
    run_setup: RunSetup, result: CalibrationResult, exported: dict[str, Any]
) -> dict[str, Any]:
    """Perplexity on the held-out windows: FP32, round-to-nearest, AdaRound, and more.

    The exported compressed-tensors checkpoint too, as ``transformers`` loads it, where it was
    written in a layout that ``transformers`` reads.
    """
    assert isinstance(result, AdaroundResult) and isinstance(run_setup.model, nn.Module)
    windows = run_setup.eval_set.tensors[0]  # type: ignore[union-attr]
    device, batch = run_setup.process.device, run_setup.settings.data.batch_size
    scores = {
        "fp32": run_setup.model,
        "nearest": result.nearest_model(),
        "adaround": result.model,
    }
    if exported.get("compressed_tensors_export", {}).get("transformers_loadable"):
        scores["compressed_tensors"] = load_compressed_tensors(run_setup.out_dir / COMPRESSED_DIR)
    perplexities = {
        key: {"perplexity": perplexity(model, windows, device, batch)}
        for key, model in scores.items()
    }
    log.info(
        "perplexity on %d held-out windows of %d tokens: %s",
        len(windows),
        windows.shape[1],
        ", ".join(f"{key} {row['perplexity']:.3f}" for key, row in perplexities.items()),
    )
    return perplexities


def write_results(
    run_setup: RunSetup,
    result: CalibrationResult,
    accuracy: dict[str, Any],
    exported: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    """``report.html`` and, last, ``results.json`` (``"finished": true``); returns the latter."""
    settings, images = run_setup.settings, run_setup.images
    onnx_path = isinstance(run_setup.model, str)
    quant = quant_summary(settings)
    if onnx_path:
        quant["granularity"] = "layer"
    results: dict[str, Any] = {
        "recipe": settings.name,
        "overrides": task_overrides(),
        "model": run_setup.model if onnx_path else settings.model.name,
        **({"source": "onnx"} if onnx_path else {}),
        **accuracy,
        "quant": quant,
        "input_shape": list(images.shape[1:]),
        "calibration_images": int(min(len(images), settings.adaround.num_samples)),
        "eval_images": len(run_setup.eval_set) if run_setup.eval_set is not None else 0,  # type: ignore[arg-type]
        **calibration_record(result),
        "seconds": round(seconds, 3),
        "environment": environment_record(run_setup.process.device),
        "run_dir": str(run_setup.out_dir),
        **exported,
        "finished": True,
    }
    return write_results_file(results, run_setup.out_dir)


def export_hf_checkpoint(
    run_setup: RunSetup, result: CalibrationResult, exported: dict[str, Any]
) -> None:
    """The compressed-tensors checkpoint (``export.compressed_tensors``), beside the run files.

    Adds its folder to ``exported["outputs"]``, and to ``exported["compressed_tensors_export"]``
    whether ``transformers`` loads it (symmetric grids, or ``export.zero_points=padded``).
    """
    settings = run_setup.settings
    if not settings.export.compressed_tensors:
        return
    assert isinstance(result, AdaroundResult)
    source = Path(settings.model.name)
    save_compressed_tensors(
        result.float_model,
        result.quantizers,
        run_setup.out_dir / COMPRESSED_DIR,
        source if source.is_dir() else None,
        settings.export.zero_points,
    )
    symmetric = all(q.is_symmetric for q in result.quantizers.values())
    loadable = symmetric or settings.export.zero_points == "padded"
    if not loadable:
        log.info(
            "%s: asymmetric zero points packed as vLLM reads them; transformers 5 cannot load "
            "that layout (export.zero_points=padded writes one it loads)",
            COMPRESSED_DIR,
        )
    exported.setdefault("outputs", {})["compressed_tensors"] = COMPRESSED_DIR
    exported["compressed_tensors_export"] = {
        "zero_points": settings.export.zero_points,
        "transformers_loadable": loadable,
    }


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
    export_hf_checkpoint(run_setup, result, exported)
    accuracy = evaluate_models(run_setup, result, exported)
    if run_setup.settings.export.verify:
        exported["grid_check"] = export.verify_grid(run_setup.out_dir, exported.get("onnx"))
    return write_results(run_setup, result, accuracy, exported, time.perf_counter() - start)

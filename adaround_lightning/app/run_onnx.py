"""One run of the ONNX path (``model.onnx=PATH``): calibrate, export, evaluate, write results.

The same phases, data, recipes and outputs as a PyTorch run (:mod:`~.run`), with the user's
ONNX graph in place of a torchvision model: the quantized graph is the input graph plus its
QDQ nodes, encodings are keyed by ONNX tensor names, and every accuracy is onnxruntime's.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from omegaconf import DictConfig

from adaround_lightning.app.evaluate_onnx import evaluate_onnx_models
from adaround_lightning.app.phases import (
    CHECKPOINT_DIR,
    prepare_run,
    quant_summary,
    run_loggers,
    task_overrides,
    write_results_file,
)
from adaround_lightning.app.settings import fingerprint
from adaround_lightning.data.sources import calibration_images, evaluation_dataset
from adaround_lightning.export.grid_check import verify_grid
from adaround_lightning.export.run_dir import ONNX_FILE
from adaround_lightning.onnx_frontend.onnx_adaround import OnnxAdaroundResult, adaround_onnx
from adaround_lightning.onnx_frontend.onnx_writer import export_onnx_run

__all__ = ["onnx_coverage", "run_onnx"]

log = logging.getLogger(__name__)


def onnx_coverage(result: OnnxAdaroundResult) -> dict[str, Any]:
    """Quantized weight elements out of those of every weighted Conv/Gemm/MatMul, and why not."""
    initializers = result.graph.initializers
    quantized = sum(initializers[result.layer(n).weight].size for n in result.quantizers)
    left = dict(result.left_in_float)
    total = quantized + sum(
        initializers[layer.weight].size for layer in result.graph.layers if layer.name in left
    )
    return {
        "quantized_elements": int(quantized),
        "total_elements": int(total),
        "fraction": quantized / total if total else 1.0,
        "left_in_float": left,
    }


def run_onnx(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Calibrate ``model.onnx`` and write the outputs of :func:`~.run.run`, ONNX-keyed.

    Returns:
        The content of ``results.json``.
    """
    start = time.perf_counter()
    settings, out_dir, _process = prepare_run(cfg)
    images, eval_set = calibration_images(settings.data), evaluation_dataset(settings.data)
    log.info("model.onnx=%s: %d calibration images", settings.model.onnx, images.shape[0])
    result = adaround_onnx(
        settings.model.onnx,
        images,
        settings.quant,
        settings.adaround,
        settings.trainer,
        checkpoint=out_dir / CHECKPOINT_DIR,
        checkpoint_tag=fingerprint(cfg),
        loggers=run_loggers(out_dir),
    )
    exported = export_onnx_run(result, out_dir)
    accuracy, exported["onnx"] = evaluate_onnx_models(
        result, out_dir / ONNX_FILE, eval_set, settings.model.num_classes, settings.data.batch_size
    )
    if settings.export.verify:
        exported["grid_check"] = verify_grid(out_dir, exported["onnx"])
    results: dict[str, Any] = {
        "recipe": settings.name,
        "overrides": task_overrides(),
        "model": str(settings.model.onnx),
        "source": "onnx",
        **accuracy,
        "quant": {**quant_summary(settings), "granularity": "layer"},
        "input_shape": list(images.shape[1:]),
        "calibration_images": int(min(len(images), settings.adaround.num_samples)),
        "eval_images": len(eval_set),  # type: ignore[arg-type]
        "layers": [report.to_dict() for report in result.layers],
        "skipped": dict(result.left_in_float),
        "coverage": onnx_coverage(result),
        "cache": None,
        "calibration_seconds": round(result.seconds, 3),
        "seconds": round(time.perf_counter() - start, 3),
        **exported,
        "finished": True,
    }
    return write_results_file(results, out_dir)

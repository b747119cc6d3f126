"""Accuracy of the float, round-to-nearest and quantized ONNX models under onnxruntime.

One pass over the evaluation set runs all of them. The quantized graph (the written QDQ file)
is also compared with the calibration's own simulation, the float graph with ``s * q`` weights
and corrected biases: their largest logit gap is the export's parity figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from adaround_lightning.app.evaluate import Accuracy
from adaround_lightning.onnx_frontend.onnx_result import OnnxAdaroundResult
from adaround_lightning.onnx_frontend.onnx_sampler import fixed_batch, ort_session, run_in_chunks

__all__ = ["evaluate_onnx_models"]


class _FileRunner:
    """An onnxruntime session of an ONNX file, run in chunks (a fixed batch axis honoured)."""

    def __init__(self, path: Path, chunk: int) -> None:
        import onnx

        model = onnx.load(str(path))
        self.session = ort_session(model.SerializeToString())
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.fixed_batch = fixed_batch(model, self.input_name)
        self.chunk = chunk

    def logits(self, images: np.ndarray) -> np.ndarray:
        parts = run_in_chunks(
            self.session,
            self.input_name,
            images,
            [self.output_name],
            {},
            self.chunk,
            self.fixed_batch,
        )
        return np.concatenate([part[0] for part in parts])


def evaluate_onnx_models(
    result: OnnxAdaroundResult,
    quantized_path: Path,
    dataset: Dataset,
    num_classes: int,
    batch_size: int = 256,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Top-1/top-5 of the float, round-to-nearest and quantized models, and the parity gap.

    Returns:
        ``({"fp32", "nearest", "adaround"}, onnx)``; ``onnx`` holds the quantized file's
        accuracy, ``max_abs_logit_diff`` against the simulation (weights only: with input
        grids the simulation has none) and ``max_abs_logit``.
    """
    cpu = torch.device("cpu")
    accuracy = {key: Accuracy(num_classes, cpu) for key in ("fp32", "nearest", "adaround")}
    sampler, output = result.sampler, result.graph.output_name
    weight_sets = {"fp32": result.float_values, "nearest": result.nearest_values()}
    quantized_file = _FileRunner(quantized_path, batch_size)
    max_diff = largest = 0.0
    for images, labels in DataLoader(dataset, batch_size=batch_size):
        array = images.numpy().astype(np.float32)
        for key, values in weight_sets.items():
            (logits,) = sampler.run(array, [output], values)
            accuracy[key].update(torch.from_numpy(logits), labels)
        quantized = quantized_file.logits(array)
        accuracy["adaround"].update(torch.from_numpy(quantized), labels)
        if not result.act_quantizers:
            (simulated,) = sampler.run(array, [output], result.values)
            max_diff = max(max_diff, float(np.abs(quantized - simulated).max()))
            largest = max(largest, float(np.abs(simulated).max()))
    scores = {key: metric.compute() for key, metric in accuracy.items()}
    parity: dict[str, Any] = dict(scores["adaround"])
    if not result.act_quantizers:
        parity.update(max_abs_logit_diff=max_diff, max_abs_logit=largest)
    return scores, parity

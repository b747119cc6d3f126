"""An exported run checked against onnxruntime and the grid check, as a user would check it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from adaround_lightning.export import ExportConfig, export_run, onnx_logits, verify_grid
from adaround_lightning.torch_frontend.torch_result import AdaroundResult


def assert_exported_with_parity(result: AdaroundResult, images: torch.Tensor, out: Path) -> None:
    """Export ``result``; onnxruntime matches PyTorch's logits on fresh inputs; verify passes."""
    export_run(result, out, images[:2], ExportConfig(onnx=True))
    x = torch.randn(4, *images.shape[1:], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = result.model(x).numpy()
    gap = np.abs(onnx_logits(out / "model.onnx", x) - reference).max()
    assert gap <= 1e-4 * max(1.0, float(np.abs(reference).max()))
    assert verify_grid(out)["passed"]

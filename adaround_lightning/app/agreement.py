"""Without labels: how closely the quantized network follows the float one.

With ``data.eval_split=null`` (or unlabelled ``data=images``) there is no accuracy to report;
the run compares the float and quantized outputs on the calibration images instead, and the
ONNX file's outputs with PyTorch's on the same images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adaround_lightning.app.evaluate import scores
from adaround_lightning.export import onnx_logits

__all__ = ["onnx_parity", "output_agreement"]


@torch.no_grad()
def output_agreement(
    float_model: nn.Module,
    quantized: dict[str, nn.Module],
    images: torch.Tensor,
    device: torch.device,
    batch_size: int,
) -> dict[str, dict[str, Any]]:
    """Per quantized model: top-1 agreement (every position of dense outputs) and relative error.

    One float pass per batch serves every quantized model.

    Returns:
        Per name, ``images``, ``top1_agreement`` (percent of argmaxes over dim 1 that agree)
        and ``relative_error`` (``||q - f|| / ||f||`` over all outputs).

    Example:
        >>> net = nn.Linear(4, 3)
        >>> output_agreement(net, {"same": net}, torch.randn(8, 4), torch.device("cpu"), 4)[
        ...     "same"]["top1_agreement"]
        100.0
    """
    agree = dict.fromkeys(quantized, 0)
    error = dict.fromkeys(quantized, 0.0)
    positions, reference = 0, 0.0
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        f = scores(float_model(x)).double()
        positions += f.argmax(1).numel()
        reference += float((f**2).sum())
        for name, model in quantized.items():
            q = scores(model(x)).double()
            agree[name] += int((f.argmax(1) == q.argmax(1)).sum())
            error[name] += float(((q - f) ** 2).sum())
    return {
        name: {
            "images": len(images),
            "top1_agreement": 100.0 * agree[name] / max(1, positions),
            "relative_error": (error[name] / reference) ** 0.5 if reference > 0 else 0.0,
        }
        for name in quantized
    }


@torch.no_grad()
def onnx_parity(path: Path, model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """``max_abs_logit_diff``, ``max_abs_logit`` and ``top1_agreement`` of the ONNX file."""
    x = images.cpu()
    reference = scores(model.cpu()(x)).numpy()
    exported = onnx_logits(path, x)
    flat_exported = exported.reshape(len(x), -1)
    flat_reference = reference.reshape(len(x), -1)
    same = flat_exported.argmax(1) == flat_reference.argmax(1)
    return {
        "max_abs_logit_diff": float(np.abs(exported - reference).max()),
        "max_abs_logit": float(np.abs(reference).max()),
        "top1_agreement": 100.0 * float(same.mean()),
    }

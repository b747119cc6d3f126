"""Hugging Face's ``Conv1D`` (GPT-2's projections) as ``nn.Linear``, so that it is quantized.

``transformers.pytorch_utils.Conv1D`` computes ``x @ W + b`` with ``W`` stored ``(in, out)``: a
Linear layer with its weight transposed, but not an ``nn.Linear``, so the trace would not see a
quantizable layer. :func:`linear_from_conv1d` swaps in an ``nn.Linear`` holding ``W.T``
``(out, in)`` (the same function), in place. A calibrated GPT-2's state dict then has Linear
layouts for these weights.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from adaround_lightning.graph.bn_fold import set_submodule

__all__ = ["is_hf_conv1d", "linear_from_conv1d"]

log = logging.getLogger(__name__)


def is_hf_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is ``transformers``' ``Conv1D`` (checked without importing it)."""
    kind = type(module)
    return kind.__name__ == "Conv1D" and kind.__module__.startswith("transformers")


@torch.no_grad()
def linear_from_conv1d(model: nn.Module) -> int:
    """Replace every ``transformers`` ``Conv1D`` of ``model`` by the equal ``nn.Linear``.

    Returns:
        How many were replaced (logged).

    Example:
        >>> linear_from_conv1d(nn.Sequential(nn.Linear(2, 2)))
        0
    """
    replaced = 0
    for name, module in list(model.named_modules()):
        if not is_hf_conv1d(module):
            continue
        weight = module.weight  # (in, out)
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=module.bias is not None)
        linear.to(device=weight.device, dtype=weight.dtype)
        linear.weight.copy_(weight.T)
        if module.bias is not None:
            linear.bias.copy_(module.bias)
        linear.from_hf_conv1d = True  # type: ignore[assignment]  # exports that must know
        set_submodule(model, name, linear)
        replaced += 1
    if replaced:
        log.info(
            "%d transformers Conv1D layers (GPT-2 style) run as nn.Linear (weight transposed, "
            "the same function) so that they are quantized",
            replaced,
        )
    return replaced

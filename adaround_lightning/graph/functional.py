"""Run a layer with another weight, and activations that never work in place.

Both are what a reconstruction needs to put a soft-quantized weight ``W~`` (eq. 22) where the
layer's own weight was, with autograd flowing to ``V``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["forward_with_weight", "functional_activation"]


def forward_with_weight(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Run ``layer`` on ``x`` with ``weight`` in place of its own weight (autograd flows to it).

    Example:
        >>> lin = nn.Linear(3, 2)
        >>> forward_with_weight(lin, torch.ones(1, 3), torch.zeros(2, 3)).equal(lin.bias[None])
        True
    """
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return layer._conv_forward(x, weight, layer.bias)
    return torch.func.functional_call(layer, {"weight": weight}, (x,), strict=False)


def functional_activation(activation: nn.Module | None) -> nn.Module | None:
    """A copy of ``activation`` that never works in place (safe on autograd tensors)."""
    if activation is None:
        return None
    activation = copy.deepcopy(activation)
    if hasattr(activation, "inplace"):
        activation.inplace = False
    return activation

"""Fold BatchNorm into the preceding convolution or linear layer.

For a layer ``y = W x + b`` followed by BatchNorm with running statistics ``mu, sigma^2`` and
affine ``gamma_bn, beta_bn``, the folded layer is (per output channel ``c``)::

    W'_c = W_c * gamma_bn_c / sqrt(sigma^2_c + eps)
    b'_c = (b_c - mu_c) * gamma_bn_c / sqrt(sigma^2_c + eps) + beta_bn_c

and the BatchNorm becomes ``nn.Identity``. AdaRound then quantizes ``W'``, the weight that a
deployed network actually multiplies with.
"""

from __future__ import annotations

import torch
from torch import nn

from adaround_lightning.graph.trace import trace_network

__all__ = ["fold_batch_norms", "set_submodule"]


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) by ``module``.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        >>> set_submodule(net, "1", nn.Identity())
        >>> net[1]
        Identity()
    """
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


@torch.no_grad()
def _fold_into(layer: nn.Module, norm: nn.Module) -> None:
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError(
            "cannot fold a BatchNorm without running statistics (track_running_stats=False)"
        )
    weight = layer.weight
    inv_std = torch.rsqrt(norm.running_var.double() + norm.eps)
    gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(inv_std)
    beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(inv_std)
    factor = gamma * inv_std  # (C_out,)
    shape = [-1] + [1] * (weight.dim() - 1)
    folded_weight = weight.double() * factor.reshape(shape)
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(inv_std)
    folded_bias = (bias - norm.running_mean.double()) * factor + beta
    layer.weight.copy_(folded_weight.to(weight.dtype))
    if layer.bias is None:
        layer.bias = nn.Parameter(folded_bias.to(weight.dtype))
    else:
        layer.bias.copy_(folded_bias.to(weight.dtype))


@torch.no_grad()
def fold_batch_norms(model: nn.Module, example_input: torch.Tensor) -> list[tuple[str, str]]:
    """Fold every BatchNorm that directly normalises a Conv/Linear output, in place.

    Args:
        model: The network, in eval mode (running statistics are used).
        example_input: A small batch used to trace the data flow.

    Returns:
        The ``(layer, batchnorm)`` name pairs that were folded.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
        >>> fold_batch_norms(net, torch.randn(2, 3, 8, 8))
        [('0', '1')]
    """
    if model.training:
        raise ValueError("call model.eval() before folding BatchNorm: folding uses running stats")
    trace = trace_network(model, example_input)
    folded = []
    for layer in trace.layers:
        if layer.norm is None:
            continue
        conv = model.get_submodule(layer.name)
        norm = model.get_submodule(layer.norm)
        _fold_into(conv, norm)
        set_submodule(model, layer.norm, nn.Identity())
        folded.append((layer.name, layer.norm))
    return folded

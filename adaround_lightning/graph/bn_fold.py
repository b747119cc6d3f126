"""Fold BatchNorm into the preceding convolution or linear layer.

For a layer ``y = W x + b`` followed by BatchNorm with running statistics ``mu, sigma^2`` and
affine ``gamma_bn, beta_bn``, the folded layer is (per output channel ``c``)::

    W'_c = W_c * gamma_bn_c / sqrt(sigma^2_c + eps)
    b'_c = (b_c - mu_c) * gamma_bn_c / sqrt(sigma^2_c + eps) + beta_bn_c

and the BatchNorm becomes ``nn.Identity``. AdaRound then quantizes ``W'``, the weight that a
deployed network actually multiplies with.

Only where the BatchNorm is the layer output's sole consumer: for ``y = conv(x); bn(y) + y`` the
folded ``y`` would also reach the addition. Tensor consumers outside modules are invisible to
hooks, so each fold is checked on the example batch: if the network's output moves by more than
float rounding, the fold is undone and the pair is logged and left as it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from adaround_lightning.graph.outputs import output_tensors
from adaround_lightning.graph.trace import trace_network

__all__ = ["fold_batch_norms", "set_submodule"]

log = logging.getLogger(__name__)

#: A fold may move the network's output by float rounding only: this much of its largest value.
_FOLD_TOLERANCE = 1e-4


@dataclass(frozen=True)
class _Saved:
    """A layer's weight and bias before a fold, to undo it."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    @classmethod
    def of(cls, layer: nn.Module) -> _Saved:
        bias = None if layer.bias is None else layer.bias.detach().clone()
        return cls(layer.weight.detach().clone(), bias)

    def restore(self, layer: nn.Module) -> None:
        layer.weight.copy_(self.weight)
        if self.bias is None:
            layer.bias = None
        else:
            layer.bias.copy_(self.bias)


def _output(model: nn.Module, example_input: torch.Tensor) -> torch.Tensor:
    # Every tensor of the output (dicts, lists, Hugging Face ModelOutputs), flattened.
    tensors = output_tensors(model(example_input))
    return (
        torch.cat([t.detach().float().flatten() for t in tensors]) if tensors else torch.zeros(())
    )


def _unchanged(before: torch.Tensor, after: torch.Tensor) -> bool:
    if before.shape != after.shape:
        return False
    scale = float(before.abs().max()) if before.numel() else 0.0
    return bool((after - before).abs().max() <= _FOLD_TOLERANCE * scale + 1e-6)


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
    pairs = [(layer.name, layer.norm) for layer in trace.layers if layer.norm is not None]
    reference = _output(model, example_input)
    # All at once first: one pass checks them all, which is the common case (2 passes, not
    # one per BatchNorm). Only if the output changed is each fold checked on its own.
    undo = _fold_all(model, pairs)
    if _unchanged(reference, _output(model, example_input)):
        return pairs
    for (name, norm_name), (saved, norm) in reversed(list(zip(pairs, undo, strict=True))):
        saved.restore(model.get_submodule(name))
        set_submodule(model, norm_name, norm)
    return _fold_one_by_one(model, pairs, reference, example_input)


def _after_fold(norm: nn.Module) -> nn.Module:
    """What stays of a folded norm: nothing, or the activation a norm-plus-activation carries.

    timm's ``BatchNormAct2d`` (a ``BatchNorm2d`` subclass) applies its dropout and activation
    after normalising; folding moves only the normalisation into the layer.
    """
    act, drop = getattr(norm, "act", None), getattr(norm, "drop", None)
    if not isinstance(act, nn.Module):
        return nn.Identity()
    if isinstance(drop, nn.Module) and not isinstance(drop, nn.Identity):
        return nn.Sequential(drop, act)
    return act


def _fold_all(model: nn.Module, pairs: list[tuple[str, str]]) -> list[tuple[_Saved, nn.Module]]:
    """Fold every pair; returns, per pair, the layer's old weights and the BatchNorm module."""
    undo = []
    for name, norm_name in pairs:
        conv, norm = model.get_submodule(name), model.get_submodule(norm_name)
        undo.append((_Saved.of(conv), norm))
        _fold_into(conv, norm)
        set_submodule(model, norm_name, _after_fold(norm))
    return undo


def _fold_one_by_one(
    model: nn.Module,
    pairs: list[tuple[str, str]],
    reference: torch.Tensor,
    example_input: torch.Tensor,
) -> list[tuple[str, str]]:
    folded = []
    for name, norm_name in pairs:
        conv = model.get_submodule(name)
        norm = model.get_submodule(norm_name)
        saved = _Saved.of(conv)
        _fold_into(conv, norm)
        set_submodule(model, norm_name, _after_fold(norm))
        if not _unchanged(reference, _output(model, example_input)):
            saved.restore(conv)
            set_submodule(model, norm_name, norm)
            log.warning(
                "BatchNorm %s not folded into %s: the layer's output has another consumer",
                norm_name,
                name,
            )
            continue
        folded.append((name, norm_name))
    return folded

"""The two networks of a calibration: the BN-folded float reference and its copy to quantize."""

from __future__ import annotations

import copy

import torch
from torch import nn

from adaround_lightning.core.errors import UserError
from adaround_lightning.graph.bn_fold import fold_batch_norms

__all__ = ["float_and_quantized"]


def float_and_quantized(
    model: nn.Module, example_input: torch.Tensor
) -> tuple[nn.Module, nn.Module]:
    """Copies of ``model`` on ``example_input``'s device, BatchNorm folded, parameters frozen.

    The first is the float reference (``fp``), the second the network being quantized (``q``);
    ``model`` itself is left unchanged.

    Raises:
        UserError: If a parameter holds NaN or Inf.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
        >>> fp, q = float_and_quantized(net, torch.randn(2, 3, 8, 8))
        >>> fp is not q and not any(p.requires_grad for p in q.parameters())
        True
    """
    fp_model = copy.deepcopy(model).eval().to(example_input.device)
    for name, parameter in fp_model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise UserError(f"parameter {name!r} contains NaN or Inf: fix the checkpoint first")
    fold_batch_norms(fp_model, example_input)
    for parameter in fp_model.parameters():
        parameter.requires_grad_(False)
    return fp_model, copy.deepcopy(fp_model)

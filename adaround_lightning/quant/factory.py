"""A weight's AdaRound quantizer: symmetric, its grid chosen by ``quant.scale_method``."""

from __future__ import annotations

import torch

from adaround_lightning.quant.grids import ScaleMethod, group_scale, weight_scale
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer, bits_to_range

__all__ = ["groups_apply", "make_quantizer", "quantizer_for_weight"]


def make_quantizer(bits: int, per_channel: bool) -> AdaroundFakeQuantizer:
    """A symmetric AdaRound quantizer of ``bits`` bits, per output channel (axis 0) or per tensor.

    Example:
        >>> make_quantizer(4, True).quant_max
        7
    """
    quant_min, quant_max = bits_to_range(bits)
    qscheme = torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric
    return AdaroundFakeQuantizer(
        qscheme=qscheme, quant_min=quant_min, quant_max=quant_max, ch_axis=0
    )


def groups_apply(weight: torch.Tensor, group_size: int | None) -> bool:
    """Whether groups of ``group_size`` fit ``weight``: they divide one output channel's size.

    A channel's elements are taken in ``weight.flatten(1)`` order (``C_in * k_h * k_w`` for a
    convolution), as the ONNX export stores them.
    """
    return group_size is not None and weight.dim() >= 2 and weight[0].numel() % group_size == 0


def quantizer_for_weight(
    weight: torch.Tensor,
    bits: int,
    per_channel: bool,
    scale_method: ScaleMethod | str,
    group_size: int | None = None,
) -> AdaroundFakeQuantizer:
    """A quantizer initialised from ``weight``: its grid, and ``V`` at ``frac(W/s)``.

    The observer sets the scale (``maxabs``); any other method then replaces it. With
    ``group_size`` (where :func:`groups_apply`), one scale per group of ``group_size`` input
    elements of each output channel, searched by the same method.

    Example:
        >>> fq = quantizer_for_weight(torch.randn(4, 3), 3, True, "minmax")
        >>> fq.initialized, tuple(fq.V.shape)
        (True, (4, 3))
    """
    quantizer = make_quantizer(bits, per_channel).to(weight.device)
    quantizer(weight)
    if per_channel and groups_apply(weight, group_size):
        quantizer.group_size = group_size
        scale = group_scale(
            weight, quantizer.quant_min, quantizer.quant_max, group_size, scale_method
        )
        quantizer.update_scale(weight, scale)
        return quantizer
    if scale_method != ScaleMethod.MAXABS:
        scale = weight_scale(
            weight, quantizer.quant_min, quantizer.quant_max, per_channel, scale_method
        )
        quantizer.update_scale(weight, scale)
    return quantizer

"""A weight's AdaRound quantizer: symmetric, its grid chosen by ``quant.scale_method``."""

from __future__ import annotations

import torch

from adaround_lightning.quant.grids import ScaleMethod, weight_scale
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer, bits_to_range

__all__ = ["make_quantizer", "quantizer_for_weight"]


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


def quantizer_for_weight(
    weight: torch.Tensor, bits: int, per_channel: bool, scale_method: ScaleMethod | str
) -> AdaroundFakeQuantizer:
    """A quantizer initialised from ``weight``: its grid, and ``V`` at ``frac(W/s)``.

    The observer sets the scale (``maxabs``); any other method then replaces it.

    Example:
        >>> fq = quantizer_for_weight(torch.randn(4, 3), 3, True, "minmax")
        >>> fq.initialized, tuple(fq.V.shape)
        (True, (4, 3))
    """
    quantizer = make_quantizer(bits, per_channel).to(weight.device)
    quantizer(weight)
    if scale_method != ScaleMethod.MAXABS:
        scale = weight_scale(
            weight, quantizer.quant_min, quantizer.quant_max, per_channel, scale_method
        )
        quantizer.update_scale(weight, scale)
    return quantizer

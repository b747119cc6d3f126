"""A weight's AdaRound quantizer: its grid (symmetric or not) chosen by ``quant.scale_method``."""

from __future__ import annotations

import logging

import torch

from adaround_lightning.quant.grids import (
    ScaleMethod,
    asymmetric_scale,
    group_scale,
    weight_scale,
)
from adaround_lightning.quant.quant_config import QuantConfig
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer, bits_to_range

__all__ = ["groups_apply", "layer_quantizer", "make_quantizer", "quantizer_for_weight"]

log = logging.getLogger(__name__)


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
    symmetric: bool = True,
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
    grouped = per_channel and groups_apply(weight, group_size)
    if not symmetric:
        quantizer.group_size = group_size if grouped else None
        rows = weight.reshape(-1, group_size) if grouped else weight.reshape(len(weight), -1)
        if not per_channel:
            rows = weight.reshape(1, -1)
        scale, zero = asymmetric_scale(rows, quantizer.quant_min, quantizer.quant_max, scale_method)
        if grouped:
            scale, zero = scale.reshape(len(weight), -1), zero.reshape(len(weight), -1)
        quantizer.update_scale(weight, scale, zero)
        return quantizer
    if grouped:
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


def layer_quantizer(
    name: str, weight: torch.Tensor, bits: int, quant: QuantConfig
) -> AdaroundFakeQuantizer:
    """:func:`quantizer_for_weight` with ``quant``'s grid; a group size it cannot take is logged.

    Example:
        >>> layer_quantizer("fc", torch.randn(4, 8), 3, QuantConfig(group_size=4)).group_size
        4
    """
    quantizer = quantizer_for_weight(
        weight,
        bits,
        quant.per_channel,
        quant.scale_method,
        quant.group_size,
        quant.weight_symmetric,
    )
    if quant.group_size is not None and quantizer.group_size is None:
        log.warning(
            "%s: quant.group_size=%d does not divide the size of one output channel of its "
            "weight, of shape %s: per-channel grid",
            name,
            quant.group_size,
            tuple(weight.shape),
        )
    return quantizer

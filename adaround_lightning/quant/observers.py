"""Observers that set symmetric weight scales without clipping the largest weight.

torch's ``MinMaxObserver`` computes a symmetric scale as ``max|W| / ((quant_max - quant_min) / 2)``,
e.g. ``max|W| / 7.5`` at 4 bits. The largest positive weight then maps to ``7.5 > quant_max = 7``
and is clipped. The observers here use ``max|W| / quant_max`` so that every weight lies inside
``[quant_min * s, quant_max * s]``: AdaRound can only choose between the two grid points next to a
weight, so a clipped weight is an error no rounding choice can recover.
"""

from __future__ import annotations

import torch
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

__all__ = ["SymmetricMinMaxObserver", "SymmetricPerChannelMinMaxObserver", "symmetric_scale"]


def symmetric_scale(
    min_val: torch.Tensor, max_val: torch.Tensor, quant_max: int, eps: float
) -> torch.Tensor:
    """Scale that maps ``max(|min_val|, |max_val|)`` exactly onto ``quant_max``.

    Args:
        min_val: Observed minimum, a scalar or one value per channel.
        max_val: Observed maximum, same shape as ``min_val``.
        quant_max: Largest integer of the grid (``2**(bits-1) - 1``).
        eps: Smallest scale returned, so that all-zero channels stay finite.

    Returns:
        The scale, same shape as ``min_val``, float32.

    Example:
        >>> symmetric_scale(torch.tensor(-1.0), torch.tensor(0.5), 7, 1e-8)
        tensor(0.1429)
    """
    max_abs = torch.maximum(min_val.abs(), max_val.abs()).float()
    return torch.clamp(max_abs / float(quant_max), min=eps)


class SymmetricMinMaxObserver(MinMaxObserver):
    """Per-tensor min/max observer whose symmetric scale is ``max|W| / quant_max``.

    Example:
        >>> obs = SymmetricMinMaxObserver(quant_min=-8, quant_max=7, dtype=torch.qint8,
        ...                               qscheme=torch.per_tensor_symmetric)
        >>> _ = obs(torch.tensor([-1.0, 0.7]))
        >>> obs.calculate_qparams()[0]
        tensor([0.1429])
    """

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        scale = symmetric_scale(self.min_val, self.max_val, self.quant_max, float(self.eps))
        scale = scale.reshape(1)
        return scale, torch.zeros_like(scale, dtype=torch.int64)


class SymmetricPerChannelMinMaxObserver(PerChannelMinMaxObserver):
    """Per-channel min/max observer whose symmetric scale is ``max|W_c| / quant_max``.

    Example:
        >>> obs = SymmetricPerChannelMinMaxObserver(quant_min=-8, quant_max=7, ch_axis=0,
        ...                                         dtype=torch.qint8,
        ...                                         qscheme=torch.per_channel_symmetric)
        >>> _ = obs(torch.tensor([[-1.0, 0.7], [0.35, 0.1]]))
        >>> obs.calculate_qparams()[0]
        tensor([0.1429, 0.0500])
    """

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        scale = symmetric_scale(self.min_val, self.max_val, self.quant_max, float(self.eps))
        return scale, torch.zeros_like(scale, dtype=torch.int64)

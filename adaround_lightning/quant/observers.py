"""Observers that set symmetric weight scales without clipping the largest weight.

torch's ``MinMaxObserver`` computes a symmetric scale as ``max|W| / ((quant_max - quant_min) / 2)``,
e.g. ``max|W| / 7.5`` at 4 bits. The largest positive weight then maps to ``7.5 > quant_max = 7``
and is clipped. The observers here use ``max|W| / quant_max`` so that every weight lies inside
``[quant_min * s, quant_max * s]``: AdaRound can only choose between the two grid points next to a
weight, so a clipped weight is an error no rounding choice can recover.

They stand on their own (``torch.ao.quantization`` is deprecated and leaving torch): plain
``nn.Module`` objects with torch.ao's constructor arguments and buffers (``min_val``,
``max_val``, ``eps``), so checkpoints written while they subclassed torch.ao's observers load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

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


class _SymmetricObserver(nn.Module):
    """Running min/max of the tensors it sees; torch.ao's observer arguments.

    Args:
        dtype: The integer dtype of the grid (kept for the reference API; int8 grids only).
        qscheme: ``torch.per_tensor_symmetric`` or ``torch.per_channel_symmetric``.
        reduce_range: Must be False (a 7-bit range is not offered).
        quant_min: Smallest integer of the grid (default -128).
        quant_max: Largest integer of the grid (default 127).
        factory_kwargs: Accepted and ignored (buffers follow the module's device).
        eps: Smallest scale.
        is_dynamic: Must be False.
    """

    min_val: torch.Tensor
    max_val: torch.Tensor
    eps: torch.Tensor

    def __init__(
        self,
        dtype: torch.dtype = torch.qint8,
        qscheme: torch.qscheme = torch.per_tensor_symmetric,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        factory_kwargs: dict[str, Any] | None = None,
        eps: float = torch.finfo(torch.float32).eps,
        is_dynamic: bool = False,
    ) -> None:
        super().__init__()
        if reduce_range or is_dynamic:
            raise ValueError("reduce_range and is_dynamic are not supported by weight observers")
        self.dtype = dtype
        self.qscheme = qscheme
        self.quant_min = -128 if quant_min is None else quant_min
        self.quant_max = 127 if quant_max is None else quant_max
        self.register_buffer("eps", torch.tensor([eps]))
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"

    def _scale(self) -> torch.Tensor:
        return symmetric_scale(self.min_val, self.max_val, self.quant_max, float(self.eps))


class SymmetricMinMaxObserver(_SymmetricObserver):
    """Per-tensor min/max observer whose symmetric scale is ``max|W| / quant_max``.

    Example:
        >>> obs = SymmetricMinMaxObserver(quant_min=-8, quant_max=7, dtype=torch.qint8,
        ...                               qscheme=torch.per_tensor_symmetric)
        >>> _ = obs(torch.tensor([-1.0, 0.7]))
        >>> obs.calculate_qparams()[0]
        tensor([0.1429])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Update the running minimum and maximum with ``x``; return ``x`` unchanged."""
        if x.numel() == 0:
            return x
        low, high = torch.aminmax(x.detach().to(self.min_val.dtype))
        self.min_val = torch.minimum(self.min_val, low)
        self.max_val = torch.maximum(self.max_val, high)
        return x

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)``, shape ``(1,)`` each; the zero point is 0."""
        scale = self._scale().reshape(1)
        return scale, torch.zeros_like(scale, dtype=torch.int64)


class SymmetricPerChannelMinMaxObserver(_SymmetricObserver):
    """Per-channel min/max observer whose symmetric scale is ``max|W_c| / quant_max``.

    Args:
        ch_axis: The channel axis (0 for Conv and Linear weights).
        **kwargs: As for :class:`SymmetricMinMaxObserver`.

    Example:
        >>> obs = SymmetricPerChannelMinMaxObserver(quant_min=-8, quant_max=7, ch_axis=0,
        ...                                         dtype=torch.qint8,
        ...                                         qscheme=torch.per_channel_symmetric)
        >>> _ = obs(torch.tensor([[-1.0, 0.7], [0.35, 0.1]]))
        >>> obs.calculate_qparams()[0]
        tensor([0.1429, 0.0500])
    """

    def __init__(self, ch_axis: int = 0, **kwargs: Any) -> None:
        kwargs.setdefault("qscheme", torch.per_channel_symmetric)
        super().__init__(**kwargs)
        self.ch_axis = ch_axis
        self.min_val = torch.tensor([])
        self.max_val = torch.tensor([])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Update the per-channel running minimum and maximum with ``x``; return ``x``."""
        if x.numel() == 0:
            return x
        # (C, everything else): one min and max per channel along ch_axis.
        per_channel = x.detach().to(self.min_val.dtype).movedim(self.ch_axis, 0)
        low, high = torch.aminmax(per_channel.reshape(per_channel.shape[0], -1), dim=1)
        if self.min_val.numel() == 0:
            self.min_val, self.max_val = low, high
        else:
            self.min_val = torch.minimum(self.min_val, low)
            self.max_val = torch.maximum(self.max_val, high)
        return x

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # The per-channel buffers start empty: take the stored shapes before the default copy.
        for name in ("min_val", "max_val"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)``, one per channel; the zero point is 0."""
        scale = self._scale()
        return scale, torch.zeros_like(scale, dtype=torch.int64)

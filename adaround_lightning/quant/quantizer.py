"""AdaRound's weight fake-quantizer (Nagel et al. 2020, arXiv:2004.10568).

Symbols, as in the paper:

* ``s``: the scale of the symmetric integer grid, one per tensor or one per output channel.
* ``V``: the continuous variable learned per weight (one per element of ``W``).
* ``h(V)``: the rectified sigmoid of eq. (23),
  ``h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`` with ``zeta = 1.1``, ``gamma = -0.1``.
* The soft-quantized weight of eq. (22): ``W~ = s * clip(floor(W / s) + h(V), q_min, q_max)``.
* After optimisation the hard weight is ``s * clip(floor(W / s) + 1[V >= 0], q_min, q_max)``.

Asymmetric grids (``quant.weight_symmetric=false``, as GPTQ and AutoRound store language models)
add an integer zero point ``z`` per channel or group: the stored integers are
``q = clip(floor(W / s) + z + h(V), q_min, q_max)`` and the weight is ``s (q - z)``. The quantizer
keeps ``floor(W / s) + z`` as its floor, so every clip, gate and mask is the symmetric one on
the same integer range, and dequantizes as the runtimes do, ``(q - z) s``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from adaround_lightning.quant.observers import (
    SymmetricMinMaxObserver,
    SymmetricPerChannelMinMaxObserver,
)

__all__ = [
    "GAMMA",
    "ZETA",
    "AdaroundFakeQuantizer",
    "bits_to_range",
    "inverse_rectified_sigmoid",
    "rectified_sigmoid",
]

#: Stretch parameters of the rectified sigmoid, paper eq. (23).
ZETA: float = 1.1
GAMMA: float = -0.1

_SYMMETRIC = (torch.per_tensor_symmetric, torch.per_channel_symmetric)


def bits_to_range(bits: int) -> tuple[int, int]:
    """Signed integer range of a ``bits``-wide symmetric grid.

    Args:
        bits: Bit width, 2 to 8.

    Returns:
        ``(quant_min, quant_max) = (-2**(bits-1), 2**(bits-1) - 1)``.

    Raises:
        ValueError: If ``bits`` is outside 2..8.

    Example:
        >>> bits_to_range(4)
        (-8, 7)
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"weight bits must be an integer from 2 to 8, got {bits!r}")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def rectified_sigmoid(V: torch.Tensor) -> torch.Tensor:
    """``h(V)`` of paper eq. (23): a sigmoid stretched to ``(gamma, zeta)`` and clipped to [0, 1].

    Example:
        >>> rectified_sigmoid(torch.tensor([-100.0, 0.0, 100.0]))
        tensor([0.0000, 0.5000, 1.0000])
    """
    return torch.clamp(torch.sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def inverse_rectified_sigmoid(h: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V) = h`` for ``h`` in [0, 1]: the logit of ``(h - gamma) / (zeta - gamma)``.

    ``h`` is clamped to [0, 1] first, so float round-off in a fractional part never yields NaN:
    ``(h - gamma) / (zeta - gamma)`` then lies in ``[1/12, 11/12]`` and the logit is finite.

    Example:
        >>> inverse_rectified_sigmoid(torch.tensor([0.5]))
        tensor([0.])
    """
    p = (h.clamp(0.0, 1.0) - GAMMA) / (ZETA - GAMMA)
    return torch.log(p) - torch.log1p(-p)


def _broadcast_shape(weight: torch.Tensor, ch_axis: int) -> list[int]:
    """Shape that broadcasts one value per channel along ``ch_axis`` against ``weight``."""
    shape = [1] * weight.dim()
    shape[ch_axis] = weight.shape[ch_axis]
    return shape


class AdaroundFakeQuantizer(nn.Module):
    """Fake-quantizer with learned up/down rounding per weight (AdaRound).

    The constructor and the switches (``enable_observer`` / ``disable_observer``,
    ``enable_fake_quant`` / ``disable_fake_quant``, ``calculate_qparams``) follow torch's
    experimental ``AdaroundFakeQuantizer`` and its ``FakeQuantize`` base, with the same buffers
    (``fake_quant_enabled``, ``observer_enabled``, ``scale``, ``zero_point``, the observer as
    ``activation_post_process``), but the class stands on its own: ``torch.ao.quantization`` is
    deprecated and leaving torch. The other differences are fixes: scales broadcast along
    ``ch_axis`` for any weight rank (Linear, Conv1d/2d/3d, grouped and depthwise convolutions);
    the zero point is zero unless :meth:`update_scale` is given one (asymmetric grids); user
    errors raise ``ValueError`` rather than ``AssertionError``; the fractional part
    ``W/s - floor(W/s)`` is clamped instead of asserted, so float edge cases cannot fail; and
    the observer runs once, on the first forward, and then switches itself off, so later
    forwards cannot silently re-initialise ``V`` (call :meth:`enable_observer` to re-calibrate
    on purpose; the observer's running min/max then includes both weights, as torch's does).

    Args:
        observer: Observer class that sets the scale. ``None`` picks a symmetric min/max observer
            whose scale is ``max|W| / quant_max`` (see :mod:`adaround_lightning.quant.observers`).
        qscheme: ``torch.per_tensor_symmetric`` or ``torch.per_channel_symmetric``.
        quant_min: Smallest integer of the grid, e.g. -8 for 4 bits.
        quant_max: Largest integer of the grid, e.g. 7 for 4 bits.
        ch_axis: Channel axis for per-channel scales (0 for Conv and Linear weights).
        **observer_kwargs: Passed on to the observer.

    Example:
        >>> w = torch.randn(8, 4, 3, 3)
        >>> fq = AdaroundFakeQuantizer(qscheme=torch.per_channel_symmetric, quant_min=-8,
        ...                            quant_max=7)
        >>> torch.allclose(fq(w), w, atol=1e-6)  # h(V) starts at the fractional part of W/s
        True
        >>> fq.use_soft_rounding = False
        >>> q = fq.integer_weight()  # int8, in [-8, 7]
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    weight_floor: torch.Tensor
    nearest_round_up: torch.Tensor
    V: torch.nn.Parameter

    def __init__(
        self,
        observer: type | None = None,
        qscheme: torch.qscheme = torch.per_tensor_symmetric,
        quant_min: int = -128,
        quant_max: int = 127,
        ch_axis: int = 0,
        **observer_kwargs: Any,
    ) -> None:
        if qscheme not in _SYMMETRIC:
            raise ValueError(
                f"AdaroundFakeQuantizer supports symmetric qschemes only "
                f"(torch.per_tensor_symmetric or torch.per_channel_symmetric), got {qscheme}"
            )
        if not (isinstance(quant_min, int) and isinstance(quant_max, int)):
            raise ValueError(f"quant_min and quant_max must be ints, got {quant_min}, {quant_max}")
        if not -128 <= quant_min < 0 < quant_max <= 127:
            raise ValueError(
                "quant_min/quant_max must describe a signed grid within int8 "
                f"(-128 <= quant_min < 0 < quant_max <= 127), got [{quant_min}, {quant_max}]"
            )
        per_channel = qscheme == torch.per_channel_symmetric
        if observer is None:
            observer = SymmetricPerChannelMinMaxObserver if per_channel else SymmetricMinMaxObserver
        observer_kwargs.setdefault("dtype", torch.qint8)
        if per_channel:
            observer_kwargs.setdefault("ch_axis", ch_axis)
        super().__init__()
        self.activation_post_process = observer(
            qscheme=qscheme, quant_min=quant_min, quant_max=quant_max, **observer_kwargs
        )
        self.quant_min, self.quant_max = quant_min, quant_max
        self.dtype = observer_kwargs["dtype"]
        self.register_buffer("fake_quant_enabled", torch.tensor([1], dtype=torch.uint8))
        self.register_buffer("observer_enabled", torch.tensor([1], dtype=torch.uint8))
        self.register_buffer("scale", torch.tensor([1.0]))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.int8))
        self.qscheme = qscheme
        self.ch_axis = ch_axis
        self.is_per_channel = per_channel
        self.is_per_tensor = not per_channel
        self.is_symmetric = True
        # Shapes are unknown until the first forward sees the weight; the empty buffers are
        # resized then (and on load_state_dict).
        self.scale = torch.empty(0)
        self.zero_point = torch.empty(0, dtype=torch.int8)  # int8: one byte per group or channel
        self.register_buffer("weight_floor", torch.empty(0))
        self.register_buffer("nearest_round_up", torch.empty(0, dtype=torch.bool))
        self.V = torch.nn.Parameter(torch.empty(0))
        self.zeta = ZETA
        self.gamma = GAMMA
        self.use_soft_rounding = True
        #: The scale ``floor(W/s)`` was taken with once a learned ratio moved ``scale``
        #: (:meth:`rescale`), else None; not in the state_dict (checkpoints carry it).
        self.floor_scale: torch.Tensor | None = None
        #: ``quant.group_size``: one scale per group of a channel's ``flatten(1)`` elements, held
        #: expanded to the weight's shape so every formula stays elementwise; None: no groups.
        self.group_size: int | None = None

    # ------------------------------------------------------------------ state
    @property
    def initialized(self) -> bool:
        """Whether the observer has set the scale and ``V`` from a weight."""
        return self.V.numel() > 0

    @property
    def bits(self) -> int:
        """Bit width of the grid, ``log2(quant_max - quant_min + 1)``."""
        return round(math.log2(self.quant_max - self.quant_min + 1))

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
        # Buffers and V start empty: give them the stored shapes before the default copy.
        for name in ("scale", "zero_point", "weight_floor", "nearest_round_up"):
            if prefix + name in state_dict:
                getattr(self, name).resize_(state_dict[prefix + name].shape)
        if prefix + "V" in state_dict:
            self.V.data = torch.empty_like(state_dict[prefix + "V"])
        torch.nn.Module._load_from_state_dict(
            self,
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )
        self._set_offset()

    def _set_offset(self) -> None:
        """Whether the grid is symmetric: every zero point 0 (read once, not per step)."""
        self.is_symmetric = not (self.zero_point.numel() > 0 and bool(self.zero_point.any()))

    @property
    def dequant_offset(self) -> torch.Tensor | None:
        """``s z`` (expanded like ``scale``) of an asymmetric grid, None for a symmetric one.

        Computed when asked rather than stored: a group-wise grid would hold another float per
        weight element for it.
        """
        return None if self.is_symmetric else self.zero_point * self.scale

    @property
    def zero_points(self) -> torch.Tensor:
        """One zero point per scale (per group, per channel or per tensor), int8."""
        if self.group_size is not None:
            return self.zero_point.reshape(self.zero_point.shape[0], -1)[:, :: self.group_size]
        return self.zero_point.flatten() if self.is_per_channel else self.zero_point.reshape(())

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self.scale, self.zero_point

    @torch.jit.export
    def extra_repr(self) -> str:
        rounded_up = int((self.V >= 0).sum()) if self.initialized else 0
        return (
            f"qscheme={self.qscheme}, quant_min={self.quant_min}, quant_max={self.quant_max}, "
            f"ch_axis={self.ch_axis}, soft={self.use_soft_rounding}, "
            f"V={tuple(self.V.shape)}, rounded_up={rounded_up}"
        )

    # ------------------------------------------------------------------ switches
    @torch.jit.export
    def enable_fake_quant(self, enabled: bool = True) -> AdaroundFakeQuantizer:
        """Turn fake quantization on (off with ``enabled=False``); off, forward returns ``X``."""
        self.fake_quant_enabled[0] = 1 if enabled else 0
        return self

    @torch.jit.export
    def disable_fake_quant(self) -> AdaroundFakeQuantizer:
        """Turn fake quantization off."""
        return self.enable_fake_quant(False)

    @torch.jit.export
    def enable_observer(self, enabled: bool = True) -> AdaroundFakeQuantizer:
        """Let the next forward observe its weight and (re-)initialise the scale and ``V``."""
        self.observer_enabled[0] = 1 if enabled else 0
        return self

    @torch.jit.export
    def disable_observer(self) -> AdaroundFakeQuantizer:
        """Stop observing: the scale and ``V`` stay as they are."""
        return self.enable_observer(False)

    def enable_weight_fake_quant(self) -> None:
        """Turn fake quantization on (as in the reference API)."""
        self.fake_quant_enabled[0] = 1

    # ------------------------------------------------------------------ maths
    def get_rectified_sigmoid_func(self) -> torch.Tensor:
        """``h(V)`` (eq. 23) while soft rounding, else the binary ``1[V >= 0]`` as floats."""
        if self.use_soft_rounding:
            return rectified_sigmoid(self.V)
        return (self.V >= 0).to(self.V.dtype)

    @torch.no_grad()
    def update_scale(
        self, X: torch.Tensor, _scale: torch.Tensor, _zero_point: torch.Tensor | None = None
    ) -> None:
        """Set the scale and initialise ``V`` so that ``h(V)`` is the fractional part of ``W/s``.

        Args:
            X: The float weight.
            _scale: One scale (per-tensor), one per channel along ``ch_axis``, or with
                ``group_size`` one per group, ``(C_out, C_in / group_size)``.
            _zero_point: None for a symmetric grid (zero point 0), else one integer per scale,
                shaped like ``_scale`` (asymmetric grids, see the module docstring).
        """
        if not torch.isfinite(X).all():
            raise ValueError("the weight contains NaN or Inf values; it cannot be quantized")
        scale = self._expand(X, _scale).to(device=X.device, dtype=torch.float32)
        zero = torch.zeros(scale.shape, dtype=torch.int8, device=X.device)
        if _zero_point is not None:  # on the integers' range, so int8 holds it
            zero = self._expand(X, _zero_point).to(device=X.device, dtype=torch.int8)
        self.scale = scale
        self.zero_point = zero
        w_over_s = X.detach().float() / scale
        floor = torch.floor(w_over_s)
        fraction = w_over_s - floor  # in [0, 1], up to float round-off
        self.weight_floor = floor + zero  # on the stored integers' range (z = 0: symmetric)
        self.nearest_round_up = fraction >= 0.5
        self._set_offset()
        self.V = torch.nn.Parameter(
            inverse_rectified_sigmoid(fraction).to(X.dtype), requires_grad=True
        )

    def _expand(self, X: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Per-tensor, per-channel or per-group values shaped to broadcast against ``X``."""
        if self.group_size is not None:  # (C_out, K / G) -> (C_out, K) -> the weight's shape
            values = values.detach().reshape(X.shape[0], -1)
            return values.repeat_interleave(self.group_size, dim=1).reshape(X.shape)
        if self.is_per_channel:
            if values.numel() != X.shape[self.ch_axis]:
                raise ValueError(
                    f"got {values.numel()} scales for {X.shape[self.ch_axis]} channels "
                    f"along ch_axis={self.ch_axis} of a weight of shape {tuple(X.shape)}"
                )
            return values.detach().reshape(_broadcast_shape(X, self.ch_axis))
        return values.detach().reshape(())

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        """``s (q - z)`` for integers (or soft values) ``q`` on the stored range.

        In that order, as runtimes dequantize (compressed-tensors, ONNX ``DequantizeLinear``), so
        the hard weight is theirs bit for bit.
        """
        if self.is_symmetric:
            return q * self.scale
        return (q - self.zero_point) * self.scale

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Soft- (or hard-) quantized weight ``s * clip(floor(X/s) + h(V), q_min, q_max)``."""
        if self.observer_enabled[0] == 1:
            observed = X.detach()
            self.activation_post_process(observed)
            scale, zero_point = self.activation_post_process.calculate_qparams()
            self.update_scale(observed, scale, zero_point)
            # One observation per weight: later forwards must not reset the learned V.
            self.disable_observer()
        if self.fake_quant_enabled[0] != 1:
            return X
        if not self.initialized:
            raise RuntimeError(
                "AdaroundFakeQuantizer has no scale yet: run one forward with the observer "
                "enabled (the default) before using it"
            )
        h_V = self.get_rectified_sigmoid_func()
        # floor() has zero gradient; only V receives gradients, through h(V).
        X_floor = torch.floor(X / self.scale)
        if not self.is_symmetric:
            X_floor = X_floor + self.zero_point
        return self.dequantize(torch.clamp(X_floor + h_V, self.quant_min, self.quant_max))

    def quantize_with(self, h_V: torch.Tensor) -> torch.Tensor:
        """``s * clip(floor(W/s) + h_V, q_min, q_max)`` with ``floor(W/s)`` stored at init.

        The training step's fast path: it skips the division and floor of :meth:`forward`
        and lets the caller reuse ``h(V)`` for the regularizer.
        """
        return self.dequantize(torch.clamp(self.weight_floor + h_V, self.quant_min, self.quant_max))

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def integer_weight(self) -> torch.Tensor:
        """The hard-rounded integers ``clip(floor(W/s) + 1[V >= 0], q_min, q_max)`` as int8.

        Uses ``floor(W/s)`` stored when the scale was set, so the result does not depend on
        whatever weight the layer holds now.
        """
        if not self.initialized:
            raise RuntimeError("AdaroundFakeQuantizer is not initialised: run a forward first")
        q = self.weight_floor + (self.V >= 0).to(self.weight_floor.dtype)
        return torch.clamp(q, self.quant_min, self.quant_max).to(torch.int8)

    @torch.no_grad()
    def nearest_integer_weight(self) -> torch.Tensor:
        """Round-to-nearest integers on the same grid, ``clip(floor(W/s + 1/2), q_min, q_max)``.

        This equals :meth:`integer_weight` at initialisation, since ``V >= 0`` exactly when the
        fractional part of ``W/s`` is at least one half.
        """
        q = self.weight_floor + self.nearest_round_up.to(self.weight_floor.dtype)
        return torch.clamp(q, self.quant_min, self.quant_max).to(torch.int8)

    @property
    def scale_count_shape(self) -> torch.Size:
        """The shape of one value per scale: ``(C_out, K / G)`` with groups, else the scale's.

        What a learned ratio per scale (``adaround.learn_scale``) is shaped like; the expanded
        ``scale`` of a group-wise grid holds one float per weight element instead.
        """
        if self.group_size is not None:
            return self.zero_points.shape
        return self.scale.shape

    def scale_by(self, weight: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """``weight`` (the shape of ``V``) times one ratio per scale, differentiably.

        With groups the weight is viewed ``(C_out, K / G, G)`` and the ratios ``(C_out, K / G,
        1)`` broadcast over it: one pass, where expanding the ratios first would add one pass
        forward and one backward over every element.

        Example:
            >>> from adaround_lightning.quant.factory import quantizer_for_weight
            >>> fq = quantizer_for_weight(torch.randn(2, 8), 4, True, "minmax", 4, False)
            >>> ratio = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
            >>> fq.scale_by(torch.ones(2, 8), ratio)[1].tolist()
            [3.0, 3.0, 3.0, 3.0, 4.0, 4.0, 4.0, 4.0]
        """
        if self.group_size is None:
            return weight * ratio
        rows = weight.shape[0]
        grouped = weight.reshape(rows, -1, self.group_size) * ratio.unsqueeze(-1)
        return grouped.reshape(weight.shape)

    @torch.no_grad()
    def rescale(self, ratio: torch.Tensor) -> None:
        """Multiply the scale by ``ratio``, one per scale (or a scalar); integers unchanged.

        ``floor(W/s)`` and ``V`` keep the grid they were taken on, :attr:`floor_scale`; the
        integers stay ``clip(floor(W/s0) + 1[V >= 0])`` and the weight becomes ``s0 r q``.

        Example:
            >>> fq = AdaroundFakeQuantizer(quant_min=-8, quant_max=7)
            >>> _ = fq(torch.tensor([[1.0, -0.5]]))
            >>> q = fq.integer_weight()
            >>> fq.rescale(torch.tensor(2.0))
            >>> bool(fq.integer_weight().equal(q)), float(fq.scale / fq.floor_scale)
            (True, 2.0)
        """
        if self.floor_scale is None:
            self.floor_scale = self.scale.clone()
        self.scale = self.scale_by(self.scale, ratio.to(self.scale)).reshape(self.scale.shape)
        self._set_offset()

    def nearest_weight(self) -> torch.Tensor:
        """Round-to-nearest on the grid ``floor(W/s)`` was taken on, dequantized (float32)."""
        grid = self.scale if self.floor_scale is None else self.floor_scale
        q = self.nearest_integer_weight().float()
        return q * grid if self.is_symmetric else (q - self.zero_point) * grid

    @torch.no_grad()
    def hard_weight(self) -> torch.Tensor:
        """The dequantized hard-rounded weight ``s (q - z)``, in float32."""
        return self.dequantize(self.integer_weight().float())

"""How the symmetric weight grid's scale is chosen (``quant.scale_method``).

With ``b`` bits the integers run from ``q_min = -2**(b-1)`` to ``q_max = 2**(b-1) - 1``; ``m`` is
``max|W|`` (per tensor or per output channel):

* ``maxabs``: ``s = m / q_max``. No weight is clipped; the grid point ``q_min`` is never used.
* ``auto`` (the default): ``mse``. Against the earlier default (``full`` at 2 bits, ``minmax``
  above) it measured better in 5 of the 8 cells of BENCHMARKS.md and on the quickstart, and
  level (within 0.02 points) in the other three (issue #23).
* ``minmax``: ``s = max(max(W) / q_max, -min(W) / -q_min)``, the finest symmetric grid that clips
  nothing: when the weight of largest magnitude is negative it lands on ``q_min`` (AIMET's
  symmetric ``tf`` weight grid). Never coarser than ``maxabs``.
* ``half``: ``s = m / (q_max + 1/2)`` (torch's ``MinMaxObserver``): a finer grid; the largest
  positive weight is clipped by at most half a step, the most negative one maps onto ``q_min``.
* ``full``: ``s = m / 2**(b-1)``: finer still; positive weights above ``q_max * s`` are clipped by
  up to a whole step.
* ``mse``: the scale ``alpha * m / q_max`` whose round-to-nearest weight error
  ``||W - s * clamp(round(W/s))||^2`` is smallest, per channel or per tensor, over ``alpha`` in
  ``[0.5, 1]`` at 2 bits and ``[0.1, 1]`` above (:func:`mse_ratios`): a 0.025 grid, then 0.005
  steps around its best.
  With 2 bits ``minmax`` would leave the integers ``{-1, 0, 1}`` (ternary weights); ``alpha = 0.5``
  is ``full``, which uses all four levels (AIMET's 2-bit grid).

Asymmetric grids (:func:`asymmetric_scale`, ``quant.weight_symmetric=false``) span
``[alpha min(W, 0), alpha max(W, 0)]`` per channel or group with ``2**b`` levels and an integer
zero point; ``minmax`` takes ``alpha = 1``, ``auto``/``mse`` searches ``alpha`` as above.
"""

from __future__ import annotations

import torch

from adaround_lightning.core.choices import Choice

__all__ = [
    "ASYMMETRIC_METHODS",
    "SCALE_METHODS",
    "ScaleMethod",
    "asymmetric_scale",
    "group_scale",
    "mse_ratios",
    "weight_scale",
]

_COARSE_STEP = 0.025  # of alpha in the coarse search
_FINE = 11  # the best coarse alpha +- one coarse step, in steps of 0.005


def mse_ratios(bits: int) -> tuple[float, float]:
    """The range of ``alpha`` in ``s = alpha * max|W| / q_max`` that ``mse`` searches.

    1 is ``maxabs`` (nothing clipped). At 2 bits the search stops at 0.5 (the ``full`` grid,
    clipping at half of ``max|W|``); above, at 0.1. Round-to-nearest error alone would clip more
    at 2 bits, but AdaRound cannot undo a clipped weight, and on both Fashion-MNIST networks of
    BENCHMARKS.md the shorter range measured better at 2 bits and the longer one at 3 (issue #23).

    Example:
        >>> mse_ratios(2), mse_ratios(4)
        ((0.5, 1.0), (0.1, 1.0))
    """
    return (0.5, 1.0) if bits <= 2 else (0.1, 1.0)


class ScaleMethod(Choice):
    """How a weight grid's scale is chosen (``quant.scale_method``)."""

    AUTO = "auto"
    MAXABS = "maxabs"
    MINMAX = "minmax"
    HALF = "half"
    FULL = "full"
    MSE = "mse"


#: The words of :class:`ScaleMethod`.
SCALE_METHODS = ScaleMethod.words()


def _max_abs(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    w = weight.detach().float()
    return w.abs().flatten(1).amax(1) if per_channel else w.abs().max().reshape(1)


@torch.no_grad()
def group_scale(
    weight: torch.Tensor, quant_min: int, quant_max: int, group_size: int, method: ScaleMethod | str
) -> torch.Tensor:
    """The scales of a group-wise grid: ``(C_out, K / G)``, ``K`` a channel's element count.

    Each group of ``G`` consecutive elements of an output channel (in ``flatten(1)`` order) is
    searched as a channel of its own, by :func:`weight_scale`'s method.

    Example:
        >>> group_scale(torch.tensor([[1.0, -0.5, 0.25, 0.1]]), -8, 7, 2, "maxabs")
        tensor([[0.1429, 0.0357]])
    """
    groups = weight.reshape(-1, group_size)  # (C_out * K / G, G), row-major per channel
    return weight_scale(groups, quant_min, quant_max, True, method).reshape(weight.shape[0], -1)


@torch.no_grad()
def weight_scale(
    weight: torch.Tensor,
    quant_min: int,
    quant_max: int,
    per_channel: bool,
    method: ScaleMethod | str,
) -> torch.Tensor:
    """The scale of ``weight``'s grid: shape ``(C_out,)`` per channel, ``(1,)`` per tensor.

    Example:
        >>> w = torch.tensor([[1.0, -0.5], [0.25, 0.1]])
        >>> weight_scale(w, -8, 7, True, "maxabs")
        tensor([0.1429, 0.0357])
    """
    method = ScaleMethod.parse(method, "quant.scale_method")
    if method == "auto":
        method = ScaleMethod.MSE
    m = _max_abs(weight, per_channel).clamp_min(1e-12)
    if method == "minmax":
        w = weight.detach().float()
        w = w.flatten(1) if per_channel else w.reshape(1, -1)
        positive = w.amax(1).clamp_min(0) / quant_max
        negative = (-w.amin(1)).clamp_min(0) / (-quant_min)
        return torch.maximum(positive, negative).clamp_min(1e-12 / quant_max)
    if method == "maxabs":
        return m / quant_max
    if method == "half":
        return m / (quant_max + 0.5)
    if method == "full":
        return m / (-quant_min)
    return _mse_scale(weight, m, quant_min, quant_max, per_channel)


def _clip_errors(
    w: torch.Tensor, scales: torch.Tensor, quant_min: int, quant_max: int
) -> torch.Tensor:
    """``||W_c - s * clamp(round(W_c / s))||^2`` of every candidate: ``(A, C)`` from ``(A, C)``.

    ``w`` is ``(C, K)``; candidates go 8 at a time so that memory stays at ``8 * C * K`` floats.
    """
    errors = []
    for chunk in scales.split(8):
        s = chunk[:, :, None]  # (a, C, 1)
        q = torch.div(w[None], s).round_().clamp_(quant_min, quant_max)  # (a, C, K)
        errors.append(q.mul_(s).sub_(w[None]).square_().sum(-1))
    return torch.cat(errors)


def _mse_scale(
    weight: torch.Tensor, m: torch.Tensor, quant_min: int, quant_max: int, per_channel: bool
) -> torch.Tensor:
    """The ``mse`` scale: a coarse search of ``alpha`` in :func:`mse_ratios`, then a fine one.

    The coarse step is 0.025; the fine search tries 0.005 steps within one coarse step of each
    channel's best (that best included), so the result is never worse than a coarse candidate:
    48 evaluations at 3 bits and above instead of the 181 of an exhaustive 0.005 grid.
    """
    w = weight.detach().float()
    w = w.flatten(1) if per_channel else w.reshape(1, -1)  # (C, K)
    low, high = mse_ratios((quant_max - quant_min + 1).bit_length() - 1)
    count = round((high - low) / _COARSE_STEP) + 1
    coarse = torch.linspace(low, high, count, device=w.device)  # (A,)
    base = m / quant_max  # (C,): maxabs
    best = coarse[_clip_errors(w, coarse[:, None] * base, quant_min, quant_max).argmin(0)]
    step = (high - low) / (count - 1)
    offsets = torch.linspace(-step, step, _FINE, device=w.device)
    fine = (best[None, :] + offsets[:, None]).clamp(low, high) * base  # (F, C)
    choice = _clip_errors(w, fine, quant_min, quant_max).argmin(0)  # (C,)
    return fine.gather(0, choice[None]).squeeze(0)


#: The scale methods an asymmetric grid takes (the others place a symmetric grid's ends).
ASYMMETRIC_METHODS = (ScaleMethod.AUTO, ScaleMethod.MINMAX, ScaleMethod.MSE)


def _affine_grid(
    low: torch.Tensor, high: torch.Tensor, quant_min: int, quant_max: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, z)`` of the grid spanning ``[low, high]`` (``low <= 0 <= high``), any shape."""
    scale = ((high - low) / (quant_max - quant_min)).clamp_min(1e-12)
    zero = (quant_min - torch.round(low / scale)).clamp(quant_min, quant_max)
    return scale, zero


def _affine_errors(
    w: torch.Tensor, ratios: torch.Tensor, low: torch.Tensor, high: torch.Tensor, bounds: tuple
) -> torch.Tensor:
    """``||W_c - s (clamp(round(W_c / s) + z) - z)||^2`` per ratio and row: ``(A, C)``."""
    errors = []
    for chunk in ratios.split(8):
        ratio = chunk[:, :, None]  # (a, C, 1) against the rows' (C, 1) ends
        scale, zero = _affine_grid(ratio * low[:, None], ratio * high[:, None], *bounds)
        q = torch.div(w[None], scale).round_().add_(zero).clamp_(*bounds)  # (a, C, K)
        errors.append(q.sub_(zero).mul_(scale).sub_(w[None]).square_().sum(-1))
    return torch.cat(errors)


@torch.no_grad()
def asymmetric_scale(
    rows: torch.Tensor, quant_min: int, quant_max: int, method: ScaleMethod | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point of each row's asymmetric grid: two ``(C,)`` tensors.

    ``rows`` is ``(C, K)``: a weight's output channels, or its groups. The zero point lies on the
    stored integers' range, so ``0`` is exactly representable: ``W ~ s (q - z)``.

    Example:
        >>> scale, zero = asymmetric_scale(torch.tensor([[0.0, 1.5, 3.0]]), -8, 7, "minmax")
        >>> round(float(scale[0]), 6), int(zero[0])
        (0.2, -8)
    """
    method = ScaleMethod.parse(method, "quant.scale_method")
    if method not in ASYMMETRIC_METHODS:
        raise ValueError(
            f"quant.scale_method={method.value} places a symmetric grid; asymmetric grids "
            f"(quant.weight_symmetric=false) take {', '.join(m.value for m in ASYMMETRIC_METHODS)}"
        )
    w = rows.detach().float()
    low, high = w.amin(1).clamp_max(0), w.amax(1).clamp_min(0)  # (C,)
    if method == ScaleMethod.MINMAX:
        return _affine_grid(low, high, quant_min, quant_max)
    bounds = (quant_min, quant_max)
    lo_ratio, hi_ratio = mse_ratios((quant_max - quant_min + 1).bit_length() - 1)
    count = round((hi_ratio - lo_ratio) / _COARSE_STEP) + 1
    alphas = torch.linspace(lo_ratio, hi_ratio, count, device=w.device)  # (A,)
    coarse = alphas[:, None].expand(-1, len(w))  # (A, C)
    best = alphas[_affine_errors(w, coarse, low, high, bounds).argmin(0)]  # (C,)
    step = (hi_ratio - lo_ratio) / (count - 1)
    offsets = torch.linspace(-step, step, _FINE, device=w.device)
    fine = (best[None, :] + offsets[:, None]).clamp(lo_ratio, hi_ratio)  # (F, C)
    choice = fine.gather(0, _affine_errors(w, fine, low, high, bounds).argmin(0)[None])[0]
    return _affine_grid(choice * low, choice * high, quant_min, quant_max)

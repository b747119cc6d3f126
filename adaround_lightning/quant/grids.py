"""How the symmetric weight grid's scale is chosen (``quant.scale_method``).

With ``b`` bits the integers run from ``q_min = -2**(b-1)`` to ``q_max = 2**(b-1) - 1``; ``m`` is
``max|W|`` (per tensor or per output channel):

* ``maxabs``: ``s = m / q_max``. No weight is clipped; the grid point ``q_min`` is never used.
* ``auto`` (the default): ``full`` at 2 bits, ``minmax`` above. With 2 bits ``minmax`` leaves
  the integers ``{-1, 0, 1}`` (``q_min`` only for the most negative weight): ternary weights;
  ``full`` uses all four levels inside the range (AIMET's 2-bit grid). Measured in BENCHMARKS.md.
* ``minmax``: ``s = max(max(W) / q_max, -min(W) / -q_min)``, the finest symmetric grid that clips
  nothing: when the weight of largest magnitude is negative it lands on ``q_min`` (AIMET's
  symmetric ``tf`` weight grid). Never coarser than ``maxabs``.
* ``half``: ``s = m / (q_max + 1/2)`` (torch's ``MinMaxObserver``): a finer grid; the largest
  positive weight is clipped by at most half a step, the most negative one maps onto ``q_min``.
* ``full``: ``s = m / 2**(b-1)``: finer still; positive weights above ``q_max * s`` are clipped by
  up to a whole step.
* ``mse``: the scale ``alpha * m / q_max`` whose round-to-nearest weight error
  ``||W - s * clamp(round(W/s))||^2`` is smallest over ``alpha`` in ``[0.5, 1]`` (100 values),
  searched per channel or per tensor.
"""

from __future__ import annotations

import torch

from adaround_lightning.core.choices import Choice

__all__ = ["SCALE_METHODS", "ScaleMethod", "weight_scale"]


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
        method = "full" if quant_max - quant_min + 1 <= 4 else "minmax"
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
    # mse: evaluate all candidate ratios at once, (alphas, C, K)
    w = (
        weight.detach().float().flatten(1)
        if per_channel
        else weight.detach().float().reshape(1, -1)
    )
    alphas = torch.linspace(0.5, 1.0, 100, device=w.device)
    scales = alphas[:, None] * (m / quant_max)[None, :]  # (A, C)
    errors = []
    for chunk in scales.split(10):  # bounded memory: 10 candidates at a time
        s = chunk[:, :, None]
        q = torch.clamp(torch.round(w[None] / s), quant_min, quant_max)
        errors.append((w[None] - q * s).pow(2).sum(-1))
    best = torch.cat(errors).argmin(0)  # (C,)
    return scales.gather(0, best[None]).squeeze(0)

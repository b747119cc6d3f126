"""The soft-quantized weight and the rounding regularizer of one quantizer, in one fused op.

Each optimisation step needs, per quantizer (paper eqs. 22-24, with ``h(V)`` of eq. 23):

* ``W~ = s * clip(floor(W / s) + h(V), q_min, q_max)``, the soft-quantized weight, and
* ``f_reg = sum(1 - |2 h(V) - 1|^beta)``, the regularizer,

and the gradient of both with respect to ``V``. Written with autograd ops that is some 25
elementwise kernels over every weight, four of them ``pow`` with a tensor exponent (the
exponent's own backward included); in the late MobileNetV2 blocks and ResNet layers, where the
activations are small and the weights large, those kernels are most of a step.
:func:`soft_weight_and_regularizer` computes the same values with one ``exp(beta log)`` and a
hand-written backward (``d/dV`` only): the same function, as a property test checks against
float64 autograd.

Gradients at the clip bounds follow ``torch.clamp``'s: none at ``h = 0`` or ``1`` exactly, none
where ``floor(W / s) + h`` sits on ``q_min`` or ``q_max``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from adaround_lightning.quant.quantizer import GAMMA, ZETA, AdaroundFakeQuantizer

__all__ = [
    "SETTLED_LOGIT",
    "grid_gate",
    "soft_rounding",
    "soft_weight_and_regularizer",
    "unsettled",
]

#: ``|V|`` from which ``h(V)`` is clipped to 0 or 1: ``(zeta - gamma) sigmoid(V) + gamma``
#: leaves (0, 1) exactly when ``sigmoid(V)`` leaves ``(1/12, 11/12)``, i.e. at ``|V| >= ln 11``.
SETTLED_LOGIT = math.log((1.0 - GAMMA) / (ZETA - 1.0))  # ln 11 (zeta - 1 = -gamma)


def grid_gate(
    weight_floor: torch.Tensor, scale: torch.Tensor, quant_min: int, quant_max: int
) -> torch.Tensor:
    """``d W~ / d u`` inside the clip: ``(zeta - gamma) s 1[q_min <= floor < q_max]``.

    Constant during a fit (``floor(W/s)`` and ``s`` are fixed), so a fit computes it once: with
    ``0 < h < 1`` (elsewhere ``dh/dV`` is 0), ``floor + h`` lies inside ``(q_min, q_max)``
    exactly when ``q_min <= floor < q_max``, and the grid clip passes the gradient there.

    Example:
        >>> grid_gate(torch.tensor([-3.0, 0.0, 1.0]), torch.tensor(0.5), -2, 1)
        tensor([0.0000, 0.6000, 0.0000])
    """
    in_grid = (weight_floor >= quant_min) & (weight_floor < quant_max)
    return torch.where(in_grid, scale * (ZETA - GAMMA), 0.0).to(weight_floor.dtype)


class _SoftRounding(torch.autograd.Function):
    """``(W~, f_reg)`` from ``V``; ``beta=None`` skips the regularizer (warm start).

    ``hard``: the forward value is the hard rounding ``s clip(floor(W/s) + 1[V >= 0])`` and
    the gradient still that of ``h(V)`` (straight-through; ``h >= 1/2`` exactly when
    ``V >= 0``). Written for few passes over the weight: in-place ops where a temporary is not
    needed again, no float * bool products (a slow path on the CPU), and the fit's constant
    :func:`grid_gate` passed in.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        V: torch.Tensor,
        weight_floor: torch.Tensor,
        scale: torch.Tensor,
        quant_min: int,
        quant_max: int,
        beta: torch.Tensor | float | None,
        gate: torch.Tensor,
        hard: bool = False,
        zero: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sig = torch.sigmoid(V)
        # h's gradient passes where u = (zeta - gamma) sig + gamma is strictly inside (0, 1),
        # i.e. |V| < ln 11 (torch.clamp passes none at its bounds either): sigmoid' = sig -
        # sig^2 there, 0 elsewhere. The indicator is built from float ops, branch-free: bool
        # masks (where, masked_fill, float * bool) cost 5-10x an arithmetic pass on the CPU
        # once they are mixed, as late in a fit.
        inside = torch.rsub(V.abs(), SETTLED_LOGIT).clamp_(min=0.0).sign_()
        dsig = torch.addcmul(sig, sig, sig, value=-1.0).mul_(inside)
        h = sig.mul_(ZETA - GAMMA).add_(GAMMA).clamp_(0.0, 1.0)  # eq. (23), sig reused
        rounding = (V >= 0).to(V.dtype) if hard else h
        soft_weight = (weight_floor + rounding).clamp_(quant_min, quant_max)
        if zero is not None:  # asymmetric grid: s (q - z), in the runtimes' order
            soft_weight.sub_(zero)
        soft_weight.mul_(scale)
        if beta is None:
            ctx.save_for_backward(dsig, gate)
            ctx.regularized = False
            return soft_weight, V.new_zeros(())
        signed = h.mul_(2.0).sub_(1.0)  # 2h - 1, in [-1, 1] (h is not needed any more)
        # |2h - 1|^beta as 2^(beta log|2h - 1| / ln 2): 0 at h = 1/2 (log 0 = -inf); exp2 is
        # several times faster than exp, and both than pow with a float exponent, here.
        powered = signed.abs().log_().mul_(beta / math.log(2.0)).exp2_()
        regularizer = powered.numel() - powered.sum()
        # d f_reg / du = -2 beta |2h - 1|^(beta - 1) sign(2h - 1) (zeta - gamma)
        #             = -2 beta (zeta - gamma) powered / (2h - 1), and 0 at h = 1/2 (0 / 0).
        dreg_du = powered.div_(signed).nan_to_num_(nan=0.0).mul_(-2.0 * (ZETA - GAMMA) * beta)
        ctx.save_for_backward(dsig, gate, dreg_du)
        ctx.regularized = True
        return soft_weight, regularizer

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_weight: torch.Tensor, grad_regularizer: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        dsig, gate, *reg = ctx.saved_tensors
        # dL/dV = (dL/dW~ dW~/du + dL/df_reg df_reg/du) du/dV with du/dV = (zeta - gamma) sig',
        # the (zeta - gamma) already in gate and dreg_du.
        grad_u = grad_weight * gate
        if ctx.regularized:
            grad_u.addcmul_(reg[0], grad_regularizer)
        return grad_u.mul_(dsig), None, None, None, None, None, None, None, None


def unsettled(V: torch.Tensor) -> torch.Tensor:
    """Where ``h(V)`` is not clipped: ``gamma < (zeta - gamma) sigmoid(V) + gamma ... < 1``.

    The same test, in the same float operations, as the gradient mask of the fused op: an
    element outside it gets no gradient from either loss term, and no later Adam step brings
    it back (see :class:`~adaround_lightning.engine.fit.reconstruction.RoundingReconstruction`),
    so its rounding is settled.

    Example:
        >>> unsettled(torch.tensor([-10.0, 0.0, 10.0]))
        tensor([False,  True, False])
    """
    return V.abs() < SETTLED_LOGIT


def soft_rounding(
    V: torch.Tensor,
    weight_floor: torch.Tensor,
    scale: torch.Tensor,
    quant_min: int,
    quant_max: int,
    beta: torch.Tensor | float | None,
    gate: torch.Tensor | None = None,
    hard: bool = False,
    zero: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W~, f_reg)`` of eqs. (22) and (24) from tensors that broadcast against ``V``.

    The elementwise form of :func:`soft_weight_and_regularizer`: ``V``, ``floor(W / s)`` and
    ``s`` may be any broadcastable shapes, e.g. the unsettled elements of a weight gathered
    into 1-D tensors. ``gate``: the fit's :func:`grid_gate` (None: computed here). ``hard``:
    the hard rounding forward with ``h(V)``'s gradient (straight-through). ``zero``: the zero
    points as floats, broadcasting like ``s``, for ``W~ = s (clip(...) - z)``; None: ``z = 0``.

    Example:
        >>> weight, f_reg = soft_rounding(torch.zeros(3), torch.zeros(3), torch.ones(3), -2, 1, 2.0)
        >>> weight, float(f_reg)
        (tensor([0.5000, 0.5000, 0.5000]), 3.0)
    """
    if gate is None:
        gate = grid_gate(weight_floor, scale, quant_min, quant_max)
    return _SoftRounding.apply(V, weight_floor, scale, quant_min, quant_max, beta, gate, hard, zero)


def soft_weight_and_regularizer(
    quantizer: AdaroundFakeQuantizer,
    beta: torch.Tensor | float | None,
    gate: torch.Tensor | None = None,
    hard: bool = False,
    zero: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W~, f_reg)`` of eqs. (22) and (24) for ``quantizer``'s ``V``, differentiable in ``V``.

    Args:
        quantizer: An initialised quantizer (``floor(W / s)`` and ``s`` stored).
        beta: The annealed exponent of eq. (24) (a float or a 0-dim tensor), or None during the
            warm start: ``f_reg`` is then 0 and not computed.
        gate: The quantizer's :func:`grid_gate`, computed once per fit (None: computed here).
        hard: Forward the hard rounding ``1[V >= 0]`` with ``h(V)``'s gradient (straight-through).
        zero: The quantizer's zero points as floats (a fit converts them once); None: converted
            here where the grid is asymmetric.

    Returns:
        The soft-quantized weight, the shape of ``V``, and ``f_reg``, a 0-dim tensor.

    Example:
        >>> from adaround_lightning.quant.factory import quantizer_for_weight
        >>> fq = quantizer_for_weight(torch.randn(3, 4), 4, True, "minmax")
        >>> weight, f_reg = soft_weight_and_regularizer(fq, 2.0)
        >>> weight.shape, bool(f_reg >= 0)
        (torch.Size([3, 4]), True)
    """
    if zero is None and not quantizer.is_symmetric:
        zero = quantizer.zero_point.to(quantizer.scale.dtype)
    return soft_rounding(
        quantizer.V,
        quantizer.weight_floor,
        quantizer.scale,
        quantizer.quant_min,
        quantizer.quant_max,
        beta,
        gate,
        hard,
        zero,
    )

"""The soft-quantized weight and the rounding regularizer of one quantizer, in one fused op.

Each optimisation step needs, per quantizer (paper eqs. 22-24, with ``h(V)`` of eq. 23):

* ``W~ = s * clip(floor(W / s) + h(V), q_min, q_max)``, the soft-quantized weight, and
* ``f_reg = sum(1 - |2 h(V) - 1|^beta)``, the regularizer,

and the gradient of both with respect to ``V``. Written with autograd ops that is some 25
elementwise kernels over every weight, four of them ``pow`` with a tensor exponent (the
exponent's own backward included); in the late MobileNetV2 blocks and ResNet layers, where the
activations are small and the weights large, those kernels are most of a step.
:func:`soft_weight_and_regularizer` computes the same values in one ``pow`` and a hand-written
backward (``d/dV`` only): the same function, as a property test checks against autograd.

Gradients at the clip bounds follow ``torch.clamp``'s: none at ``h = 0`` or ``1`` exactly, none
where ``floor(W / s) + h`` sits on ``q_min`` or ``q_max``.
"""

from __future__ import annotations

from typing import Any

import torch

from adaround_lightning.quant.quantizer import GAMMA, ZETA, AdaroundFakeQuantizer

__all__ = ["soft_weight_and_regularizer"]


class _SoftRounding(torch.autograd.Function):
    """``(W~, f_reg)`` from ``V``; ``beta=None`` skips the regularizer (warm start)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        V: torch.Tensor,
        weight_floor: torch.Tensor,
        scale: torch.Tensor,
        quant_min: int,
        quant_max: int,
        beta: torch.Tensor | float | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sig = torch.sigmoid(V)
        unclipped = sig * (ZETA - GAMMA) + GAMMA
        h = unclipped.clamp(0.0, 1.0)
        level = weight_floor + h
        soft_weight = level.clamp(quant_min, quant_max) * scale
        # The gradient of eq. (23) w.r.t. V where h is not clipped (torch.clamp: none at the
        # bounds), times the mask of the grid clip: what d/dV of both terms shares.
        inside = (unclipped > 0.0) & (unclipped < 1.0)
        dh_dV = sig * (1.0 - sig) * (ZETA - GAMMA) * inside
        grid_inside = (level > quant_min) & (level < quant_max)
        if beta is None:
            ctx.save_for_backward(dh_dV, grid_inside, scale)
            ctx.regularized = False
            return soft_weight, V.new_zeros(())
        signed = 2.0 * h - 1.0  # in [-1, 1]
        magnitude = signed.abs()
        powered = magnitude.pow(beta)  # |2h - 1|^beta
        regularizer = powered.numel() - powered.sum()
        # d f_reg / dh = -2 beta |2h - 1|^(beta - 1) sign(2h - 1) = -2 beta powered / (2h - 1),
        # and 0 at h = 1/2 (powered = 0 there: dividing by 1 instead keeps it 0).
        dreg_dh = powered.div_(signed + (signed == 0)).mul_(-2.0 * beta)
        ctx.save_for_backward(dh_dV, grid_inside, scale, dreg_dh)
        ctx.regularized = True
        return soft_weight, regularizer

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_weight: torch.Tensor, grad_regularizer: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        dh_dV, grid_inside, scale, *reg = ctx.saved_tensors
        grad_h = grad_weight * scale * grid_inside
        if ctx.regularized:
            grad_h = grad_h + grad_regularizer * reg[0]
        return grad_h * dh_dV, None, None, None, None, None


def soft_weight_and_regularizer(
    quantizer: AdaroundFakeQuantizer, beta: torch.Tensor | float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W~, f_reg)`` of eqs. (22) and (24) for ``quantizer``'s ``V``, differentiable in ``V``.

    Args:
        quantizer: An initialised quantizer (``floor(W / s)`` and ``s`` stored).
        beta: The annealed exponent of eq. (24) (a float or a 0-dim tensor), or None during the
            warm start: ``f_reg`` is then 0 and not computed.

    Returns:
        The soft-quantized weight, the shape of ``V``, and ``f_reg``, a 0-dim tensor.

    Example:
        >>> from adaround_lightning.quant.factory import quantizer_for_weight
        >>> fq = quantizer_for_weight(torch.randn(3, 4), 4, True, "minmax")
        >>> weight, f_reg = soft_weight_and_regularizer(fq, 2.0)
        >>> weight.shape, bool(f_reg >= 0)
        (torch.Size([3, 4]), True)
    """
    return _SoftRounding.apply(
        quantizer.V,
        quantizer.weight_floor,
        quantizer.scale,
        quantizer.quant_min,
        quantizer.quant_max,
        beta,
    )

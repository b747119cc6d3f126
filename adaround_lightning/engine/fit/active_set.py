"""Settled roundings skipped: the soft rounding and Adam's update only where ``h(V)`` is unclipped.

An element whose ``h(V)`` (eq. 23) is clipped to exactly 0 or 1 is *settled*: the clip passes
it no gradient from either loss term, and Adam's later updates keep the sign of its decaying
first moment, the outward one that clipped it, so it never comes back and its rounding
``1[V >= 0]`` is final (the argument behind ``adaround.stop_when_binary``). From then on its
``W~`` is the constant ``s clip(floor(W/s) + h, q_min, q_max)`` and its term of ``f_reg``
(eq. 24) is ``1 - |2h - 1|^beta = 0``.

In the quickstart's fits about half of all elements are settled on average over a fit (over
90 % by its end), yet every step spent the sigmoid, the log and exp of the regularizer and
Adam's update on all of them: in blocks with large weights and small activations (ResNet18's
``layer4``, the last MobileNetV2 blocks) that elementwise work is most of a step.

:class:`ActiveRounding` keeps, per quantizer, the flat indices of the unsettled elements, their
``V`` as a 1-D parameter (with Adam's state moved over by :func:`swap_parameter`), and ``W~``
with every settled element in place; a step scatters the unsettled elements' ``W~`` into it.
In exact arithmetic the unsettled elements see the gradients and updates they would see
otherwise, so the integers are the same; only the ``V`` of settled elements stops moving
outward (their rounding cannot change). In float, an elementwise kernel may round an element
one ulp differently by where it sits in the tensor (the vectorized body or the scalar tail:
``torch.sigmoid`` does), so a few roundings near a tie can differ, as after any change of
layout (Fashion-MNIST MobileNetV2 W4: 84.98 % against 84.97 %). Not under DDP, whose reducer
is tied to the module's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer
from adaround_lightning.quant.soft_rounding import (
    grid_gate,
    soft_rounding,
    soft_weight_and_regularizer,
)

__all__ = ["COMPACT_BELOW", "ActiveRounding", "swap_parameter"]

#: Compact once the unsettled elements are at most this fraction of those tracked: each
#: compaction costs a few passes over the tracked elements, and a sparse step a scatter and a
#: gather over the unsettled ones plus one copy of the weight.
COMPACT_BELOW = 0.9


class _Scatter(torch.autograd.Function):
    """``base`` with ``values`` at ``index`` (1-D); the gradient flows to ``values`` only.

    ``clone().index_copy_`` and ``index_select`` are several times faster on the CPU than
    ``index_put`` and advanced indexing, which autograd would use otherwise.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, base: torch.Tensor, index: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(index)
        return base.clone().index_copy_(0, index, values)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (index,) = ctx.saved_tensors
        return None, None, grad.index_select(0, index)


@dataclass
class ActiveRounding:
    """The elements of one quantizer's ``V`` that are still trained.

    Attributes:
        quantizer: The quantizer whose ``V`` this tracks.
        parameter: What Adam trains: ``quantizer.V`` itself while dense, then the unsettled
            elements' ``V``, shape ``(n,)``.
        index: Flat indices of ``parameter``'s elements in ``V``, shape ``(n,)``; None: dense.
        settled_weight: ``W~`` flattened, shape ``(V.numel(),)``, right at every settled element.
        weight_floor: ``floor(W/s)`` of the unsettled elements, shape ``(n,)``.
        scale: ``s`` of the unsettled elements, shape ``(n,)``.
        gate: The fit's constant :func:`~adaround_lightning.quant.soft_rounding.grid_gate`
            of the tracked elements (shape of ``V`` while dense, then ``(n,)``).
        zero: The zero points as floats of an asymmetric grid (broadcast like ``scale``
            while dense, then ``(n,)``), converted once per fit; None on a symmetric grid.

    Example:
        >>> from adaround_lightning.quant.factory import quantizer_for_weight
        >>> fq = quantizer_for_weight(torch.randn(4, 3), 4, True, "minmax")
        >>> rounding = ActiveRounding(fq, fq.V)
        >>> keep = torch.tensor([True, False] * 6).reshape(4, 3)
        >>> _ = rounding.compact(keep)
        >>> rounding.tracked, rounding.soft(None)[0].shape
        (6, torch.Size([4, 3]))
    """

    quantizer: AdaroundFakeQuantizer
    parameter: nn.Parameter
    index: torch.Tensor | None = None
    settled_weight: torch.Tensor | None = None
    weight_floor: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    gate: torch.Tensor | None = None
    zero: torch.Tensor | None = None

    def _dense_gate(self) -> torch.Tensor:
        # Computed at the first step, after Lightning has moved the quantizer to its device.
        if self.gate is None:
            q = self.quantizer
            self.gate = grid_gate(q.weight_floor, q.scale, q.quant_min, q.quant_max)
            if not q.is_symmetric:
                self.zero = q.zero_point.to(q.scale.dtype)
        return self.gate

    @property
    def tracked(self) -> int:
        """How many elements are still trained."""
        return self.parameter.numel()

    def soft(
        self, beta: torch.Tensor | float | None, hard: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W~, f_reg)`` of the whole weight (shape of ``V``), differentiable in the parameter.

        ``hard``: the hard rounding forward with ``h(V)``'s gradient (straight-through).
        """
        quantizer = self.quantizer
        if self.index is None:
            gate = self._dense_gate()
            return soft_weight_and_regularizer(quantizer, beta, gate, hard, self.zero)
        active_weight, f_reg = soft_rounding(
            self.parameter,
            self.weight_floor,
            self.scale,
            quantizer.quant_min,
            quantizer.quant_max,
            beta,
            self.gate,
            hard,
            self.zero,
        )
        weight = _Scatter.apply(self.settled_weight, self.index, active_weight)
        return weight.view(quantizer.V.shape), f_reg

    @torch.no_grad()
    def sync(self) -> None:
        """Write the trained elements' ``V`` back into ``quantizer.V``."""
        if self.index is not None:
            self.quantizer.V.view(-1)[self.index] = self.parameter

    @torch.no_grad()
    def compact(self, keep: torch.Tensor) -> nn.Parameter:
        """Train only the elements where ``keep`` (a mask shaped like :attr:`parameter`) holds.

        Returns:
            The new :attr:`parameter`; its optimizer state is the caller's
            (:func:`swap_parameter`).
        """
        self.sync()
        quantizer = self.quantizer
        if self.index is None:
            V = quantizer.V
            self.index = torch.arange(V.numel(), device=V.device)
            self.weight_floor = quantizer.weight_floor.reshape(-1)
            self.scale = quantizer.scale.expand(V.shape).reshape(-1)
            self.settled_weight = torch.empty(V.numel(), dtype=V.dtype, device=V.device)
            self.gate = self._dense_gate().reshape(-1)
            if self.zero is not None:
                self.zero = self.zero.expand(V.shape).reshape(-1)
        # W~ of every tracked element with the same ops as a step: exact at the settled ones
        # (h is exactly 0 or 1 there); the unsettled ones are overwritten in every step.
        self.settled_weight[self.index] = soft_rounding(
            self.parameter.reshape(-1),
            self.weight_floor,
            self.scale,
            quantizer.quant_min,
            quantizer.quant_max,
            None,
            self.gate,
            zero=self.zero,
        )[0]
        kept = keep.reshape(-1).nonzero().squeeze(1)  # positions among the tracked elements
        self.index = self.index.index_select(0, kept)
        self.weight_floor = self.weight_floor.index_select(0, kept)
        self.scale = self.scale.index_select(0, kept)
        self.gate = self.gate.index_select(0, kept)
        if self.zero is not None:
            self.zero = self.zero.index_select(0, kept)
        self.parameter = nn.Parameter(self.parameter.detach().reshape(-1).index_select(0, kept))
        return self.parameter


def swap_parameter(
    optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter, keep: torch.Tensor
) -> None:
    """Put ``new`` in ``old``'s place in ``optimizer``, with the state of ``old[keep]``.

    Tensors of ``old``'s shape in its state (Adam's moments) are gathered at ``keep``; the
    rest (the step count) is kept as it is.

    Example:
        >>> old = nn.Parameter(torch.zeros(2, 2))
        >>> adam = torch.optim.Adam([old])
        >>> old.grad = torch.ones(2, 2)
        >>> adam.step()
        >>> keep = torch.tensor([[True, False], [False, True]])
        >>> new = nn.Parameter(old.detach()[keep])
        >>> swap_parameter(adam, old, new, keep)
        >>> adam.state[new]["exp_avg"].shape
        torch.Size([2])
    """
    for group in optimizer.param_groups:
        for position, parameter in enumerate(group["params"]):
            if parameter is old:
                group["params"][position] = new
                state = optimizer.state.pop(old, {})
                optimizer.state[new] = {
                    key: value[keep]
                    if torch.is_tensor(value) and value.shape == old.shape
                    else value
                    for key, value in state.items()
                }
                return
    raise ValueError("the parameter is not in the optimizer")

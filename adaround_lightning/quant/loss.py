"""AdaRound's objective: output reconstruction plus the annealed rounding regularizer.

The paper's layer objective, eq. (25) with the regularizer of eq. (24)::

    min_V  || f_a(W x) - f_a(W~ x~) ||_F^2  +  lambda * f_reg(V)
    f_reg(V) = sum_ij 1 - |2 h(V_ij) - 1|^beta

``beta`` is annealed from ``beta_range[0]`` (20) to ``beta_range[1]`` (2) with a cosine over the
iterations after the warm start; during the warm start (the first 20 % by default) ``f_reg = 0``.

Two reconstruction conventions are supported:

* ``"paper"`` (default, as AIMET and the authors' code): squared error summed over the output
  channel dimension and averaged over every other dimension, with ``reg_param = 0.01``. The
  channel dimension is dim 1 for convolutions (``(N, C, ...)``) and the last one for a Linear
  on ``(N, ..., C)`` (ViT and Swin tokens: summing over dim 1 there would sum over tokens and
  move the balance against the regularizer by ``C / L``).
* ``"mean"`` (torch's experimental reference): mean squared error over all elements, with
  ``reg_param = 0.001``. The per-element mean is ``C`` times smaller, hence the smaller lambda.
"""

from __future__ import annotations

import math

import torch

from adaround_lightning.core.choices import Choice
from adaround_lightning.quant.quantizer import rectified_sigmoid

__all__ = ["DEFAULT_REG_PARAM", "AdaptiveRoundingLoss", "Reconstruction"]


class Reconstruction(Choice):
    """How the reconstruction term reduces the squared error (see the module docstring)."""

    PAPER = "paper"
    MEAN = "mean"


#: lambda of eq. (25) per reconstruction convention.
DEFAULT_REG_PARAM: dict[Reconstruction, float] = {
    Reconstruction.PAPER: 0.01,
    Reconstruction.MEAN: 0.001,
}


class AdaptiveRoundingLoss(torch.nn.Module):
    """The two terms of AdaRound's objective, returned as ``(regularization, reconstruction)``.

    Args:
        max_iter: Number of optimisation steps; ``curr_iter`` runs over ``0 .. max_iter - 1``.
        warm_start: Fraction of ``max_iter`` with no regularization.
        beta_range: ``(start, end)`` of the annealed exponent ``beta``.
        reg_param: lambda of eq. (25). ``None`` picks the value that matches ``reconstruction``.
        reconstruction: ``"paper"`` or ``"mean"`` (see the module docstring).

    Example:
        >>> loss = AdaptiveRoundingLoss(max_iter=100)
        >>> V = torch.zeros(4, 3)
        >>> reg, rec = loss(torch.ones(2, 4), torch.zeros(2, 4), V, curr_iter=50)
        >>> float(rec)  # sum over 4 channels, mean over 2 rows
        4.0
    """

    def __init__(
        self,
        max_iter: int,
        warm_start: float = 0.2,
        beta_range: tuple[float, float] = (20, 2),
        reg_param: float | None = None,
        reconstruction: Reconstruction | str = Reconstruction.PAPER,
    ) -> None:
        super().__init__()
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
        if not 0.0 <= warm_start < 1.0:
            raise ValueError(f"warm_start must be in [0, 1), got {warm_start}")
        if len(beta_range) != 2 or min(beta_range) <= 0:
            raise ValueError(f"beta_range must be two positive numbers, got {beta_range}")
        reconstruction = Reconstruction.parse(reconstruction, "reconstruction")
        if reg_param is None:
            reg_param = DEFAULT_REG_PARAM[reconstruction]
        if reg_param < 0:
            raise ValueError(f"reg_param must be >= 0, got {reg_param}")
        self.max_iter = max_iter
        self.warm_start = float(warm_start)
        self.beta_range = (float(beta_range[0]), float(beta_range[1]))
        self.reg_param = float(reg_param)
        self.reconstruction = reconstruction

    # ------------------------------------------------------------ schedule
    @property
    def warm_start_end(self) -> float:
        """First iteration (possibly fractional) at which the regularizer is on."""
        return self.warm_start * self.max_iter

    def _check_iter(self, curr_iter: int) -> None:
        if not 0 <= curr_iter < self.max_iter:
            raise ValueError(
                f"curr_iter must be in [0, max_iter={self.max_iter}), got {curr_iter}; "
                "create the loss with the number of steps the optimisation runs"
            )

    def is_regularized(self, curr_iter: int) -> bool:
        """Whether the regularizer is on at ``curr_iter`` (i.e. the warm start is over)."""
        self._check_iter(curr_iter)
        return curr_iter >= self.warm_start_end

    def beta(self, curr_iter: int) -> float:
        """Annealed ``beta`` at ``curr_iter``: a cosine from ``beta_range[0]`` to ``beta_range[1]``.

        ``beta = end + (start - end) / 2 * (1 + cos(pi * t))`` with
        ``t = (curr_iter - warm_start_end) / (max_iter - warm_start_end)``; before the warm start
        ends ``t`` is clamped to 0 (``beta = start``).
        """
        self._check_iter(curr_iter)
        start, end = self.beta_range
        t = (curr_iter - self.warm_start_end) / (self.max_iter - self.warm_start_end)
        t = min(max(t, 0.0), 1.0)
        return end + 0.5 * (start - end) * (1.0 + math.cos(t * math.pi))

    def schedule(
        self, device: torch.device | None = None, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole schedule as tensors, for a training step that indexes them by step.

        Returns:
            ``(beta, reg_weight)``, each of shape ``(max_iter,)``: ``beta[t]`` is :meth:`beta`
            and ``reg_weight[t]`` is ``reg_param`` after the warm start and 0 during it.
        """
        betas = [self.beta(t) for t in range(self.max_iter)]
        weights = [self.reg_param if self.is_regularized(t) else 0.0 for t in range(self.max_iter)]
        return (
            torch.tensor(betas, device=device, dtype=dtype),
            torch.tensor(weights, device=device, dtype=dtype),
        )

    # ------------------------------------------------------------ terms
    @staticmethod
    def regularizer(V: torch.Tensor, beta: torch.Tensor | float) -> torch.Tensor:
        """``f_reg(V) = sum 1 - |2 h(V) - 1|^beta`` (eq. 24), without lambda."""
        return AdaptiveRoundingLoss.regularizer_of_h(rectified_sigmoid(V), beta)

    @staticmethod
    def regularizer_of_h(h_V: torch.Tensor, beta: torch.Tensor | float) -> torch.Tensor:
        """``f_reg`` from an already computed ``h(V)`` (saves a sigmoid per step)."""
        return (1.0 - (2.0 * h_V - 1.0).abs().pow(beta)).sum()

    def reconstruction_loss(
        self,
        soft_quantized_output: torch.Tensor,
        original_output: torch.Tensor,
        channel_dim: int = 1,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Squared output error under the configured convention (see the module docstring).

        Args:
            soft_quantized_output: The output with soft-quantized weights.
            original_output: The float target, the same shape.
            channel_dim: The output-channel axis: 1 for convolutions, -1 for a Linear.
            weights: Per-element weights of the squared error, the same shape (BRECQ's
                Fisher diagonal, :mod:`~adaround_lightning.engine.fit.fisher`), or None.
        """
        error = (soft_quantized_output - original_output).pow(2)
        if weights is not None:
            error = error * weights
        if self.reconstruction == "mean" or error.dim() < 2:
            return error.mean()
        return error.sum(dim=channel_dim).mean()

    def rounding_regularization(self, V: torch.Tensor, curr_iter: int) -> torch.Tensor:
        """``lambda * f_reg(V)`` at ``curr_iter``; zero on ``V``'s device in the warm start."""
        if not self.is_regularized(curr_iter):
            return V.new_zeros(())
        return self.reg_param * self.regularizer(V, self.beta(curr_iter))

    def forward(
        self,
        soft_quantized_output: torch.Tensor,
        original_output: torch.Tensor,
        V: torch.Tensor,
        curr_iter: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(regularization, reconstruction)`` at step ``curr_iter``.

        Raises:
            ValueError: If ``curr_iter`` is not in ``[0, max_iter)``.
        """
        regularization = self.rounding_regularization(V, curr_iter)
        reconstruction = self.reconstruction_loss(soft_quantized_output, original_output)
        return regularization.to(reconstruction.dtype), reconstruction

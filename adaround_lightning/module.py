"""The LightningModule that learns the rounding of one layer."""

from __future__ import annotations

import copy

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from adaround_lightning.loss import AdaptiveRoundingLoss
from adaround_lightning.quantizer import AdaroundFakeQuantizer, rectified_sigmoid

__all__ = ["LayerReconstruction", "forward_with_weight", "functional_activation"]


def forward_with_weight(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Run ``layer`` on ``x`` with ``weight`` in place of its own weight (autograd flows to it).

    Example:
        >>> lin = nn.Linear(3, 2)
        >>> forward_with_weight(lin, torch.ones(1, 3), torch.zeros(2, 3)).equal(lin.bias[None])
        True
    """
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return layer._conv_forward(x, weight, layer.bias)
    return torch.func.functional_call(layer, {"weight": weight}, (x,), strict=False)


def functional_activation(activation: nn.Module | None) -> nn.Module | None:
    """A copy of ``activation`` that never works in place (safe on autograd tensors)."""
    if activation is None:
        return None
    activation = copy.deepcopy(activation)
    if hasattr(activation, "inplace"):
        activation.inplace = False
    return activation


class LayerReconstruction(L.LightningModule):
    """Learns ``V`` of one layer's :class:`AdaroundFakeQuantizer` (paper eq. 25).

    Only ``V`` is trained, with Adam. Each step computes ``f_a(W~ x~)`` with the soft-quantized
    weight and both loss terms at ``curr_iter = trainer.global_step``. The annealed ``beta`` and
    the regularizer weight come from device tensors indexed by the step (no host sync, fixed
    shapes); the two terms are kept per step in a device tensor (``history``, shape
    ``(max_iter, 2)``) and logged as epoch means, so logging syncs once per fit, not per step.
    When fit ends, ``layer`` (the module of the quantized network) receives the hard-rounded
    weight ``s * q``.

    Args:
        layer: The Conv/Linear module of the quantized network (still holding its float weight).
        quantizer: Its quantizer, already initialised from the weight (one forward).
        loss: The AdaRound loss, whose ``max_iter`` equals the number of training steps.
        activation: The activation that directly follows the layer, or None.
        lr: Adam's learning rate.
        name: Prefix of the logged metrics (the layer's name), so that one logger serves all
            layers of a run.

    Example:
        >>> layer = nn.Linear(4, 3)
        >>> fq = AdaroundFakeQuantizer(quant_min=-8, quant_max=7)
        >>> _ = fq(layer.weight)
        >>> module = LayerReconstruction(layer, fq, AdaptiveRoundingLoss(max_iter=10), None, 1e-3)
    """

    def __init__(
        self,
        layer: nn.Module,
        quantizer: AdaroundFakeQuantizer,
        loss: AdaptiveRoundingLoss,
        activation: nn.Module | None = None,
        lr: float = 1e-3,
        name: str = "layer",
    ) -> None:
        super().__init__()
        if not quantizer.initialized:
            raise ValueError("initialise the quantizer with one forward of the weight first")
        self.layer = layer
        self.quantizer = quantizer
        self.loss = loss
        self.activation = functional_activation(activation)
        self.lr = lr
        self.name = name
        for parameter in self.layer.parameters():
            parameter.requires_grad_(False)
        self.quantizer.V.requires_grad_(True)
        self.quantizer.use_soft_rounding = True
        beta, reg_weight = loss.schedule()
        self.register_buffer("beta", beta, persistent=False)
        self.register_buffer("reg_weight", reg_weight, persistent=False)
        self.register_buffer("history", torch.zeros(loss.max_iter, 2), persistent=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([self.quantizer.V], lr=self.lr)

    def soft_output(self, x: torch.Tensor, h_V: torch.Tensor | None = None) -> torch.Tensor:
        """``f_a(W~ x)`` with the soft-quantized weight ``W~`` of eq. (22)."""
        if h_V is None:
            h_V = rectified_sigmoid(self.quantizer.V)
        out = forward_with_weight(self.layer, x, self.quantizer.quantize_with(h_V))
        return self.activation(out) if self.activation is not None else out

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        inputs, targets = batch
        curr_iter = self.trainer.global_step  # 0 in the first step
        if curr_iter >= self.loss.max_iter:
            raise ValueError(
                f"step {curr_iter} is past the loss schedule ({self.loss.max_iter} steps)"
            )
        h_V = rectified_sigmoid(self.quantizer.V)
        outputs = self.soft_output(inputs, h_V)
        reconstruction = self.loss.reconstruction_loss(outputs, targets.to(outputs.dtype))
        if curr_iter < self.loss.warm_start_end:
            # Warm start: no regularizer. A Python-int comparison, so no host sync.
            regularization = reconstruction.new_zeros(())
        else:
            regularization = self.reg_weight[curr_iter] * AdaptiveRoundingLoss.regularizer_of_h(
                h_V, self.beta[curr_iter]
            )
        self.history[curr_iter, 0] = reconstruction.detach()
        self.history[curr_iter, 1] = regularization.detach()
        # Epoch means accumulate on the device: no host sync per step; under DDP one
        # all-reduce when the fit ends.
        for term, value in (("reconstruction", reconstruction), ("regularization", regularization)):
            self.log(
                f"{self.name}/{term}_mean",
                value.detach(),
                on_step=False,
                on_epoch=True,
                batch_size=inputs.shape[0],
                sync_dist=True,
            )
        return reconstruction + regularization

    def loss_curve(self, points: int = 200) -> list[list[float]]:
        """``[step, reconstruction, regularization]`` rows, at most ``points`` (one host copy)."""
        stride = max(1, self.history.shape[0] // points)
        rows = self.history[::stride].cpu().tolist()
        return [[float(i * stride), r[0], r[1]] for i, r in enumerate(rows)]

    def on_train_end(self) -> None:
        # The per-step curve goes to the loggers once, at the end: one copy, no per-step sync.
        if self.loggers:
            for step, reconstruction, regularization in self.loss_curve():
                metrics = {
                    f"{self.name}/reconstruction": reconstruction,
                    f"{self.name}/regularization": regularization,
                }
                for logger in self.loggers:
                    logger.log_metrics(metrics, step=int(step))
            for logger in self.loggers:
                logger.save()
        self.quantizer.use_soft_rounding = False
        self.quantizer.V.requires_grad_(False)
        with torch.no_grad():
            self.layer.weight.copy_(self.quantizer.hard_weight().to(self.layer.weight.dtype))

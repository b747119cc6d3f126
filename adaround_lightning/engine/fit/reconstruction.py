"""The reconstruction LightningModules: learn the rounding ``V`` of one layer or of one block."""

from __future__ import annotations

import functools
import logging
from typing import Any

import lightning as L
import torch
from torch import nn

from adaround_lightning.engine.fit.active_set import COMPACT_BELOW, ActiveRounding, swap_parameter
from adaround_lightning.engine.fit.adam import rounding_adam
from adaround_lightning.graph.bias_correction import channel_dim
from adaround_lightning.graph.functional import forward_with_weight, functional_activation
from adaround_lightning.quant.loss import AdaptiveRoundingLoss
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer, rectified_sigmoid
from adaround_lightning.quant.soft_rounding import unsettled

__all__ = [
    "SETTLE_CHECK_EVERY",
    "BlockReconstruction",
    "LayerReconstruction",
    "RoundingReconstruction",
]

log = logging.getLogger(__name__)


#: Optimizer steps between two looks at which elements are settled (one host sync each).
SETTLE_CHECK_EVERY = 16


@functools.cache
def _log_skip_settled_off() -> None:
    """Say once per process that DDP turns ``skip_settled`` off (not once per fit)."""
    log.info("engine.skip_settled is off under DDP: every fit trains all elements")


class RoundingReconstruction(L.LightningModule):
    """Shared by the layer and block modules: trains the ``V`` of some quantizers.

    Each step computes ``h(V)`` of every quantizer once, the soft output of the subclass, the
    reconstruction term and ``sum_l lambda f_reg(V_l)`` at ``curr_iter = trainer.global_step``.
    ``beta`` and the regularizer weight come from device tensors indexed by the step (fixed
    shapes, no host sync); both terms are kept per step in ``history`` (shape ``(max_iter, 2)``)
    and logged once per fit (their means), so logging costs nothing per step.

    An element whose ``h(V)`` is clipped to exactly 0 or 1 is settled: the clip of eq. (23)
    passes it no gradient from either term (``torch.clamp`` passes none at its bounds either),
    and Adam's later updates keep the sign of its decaying first moment, the outward direction
    that clipped it, so it never leaves the clip again and its rounding ``1[V >= 0]`` cannot
    change. Every :data:`SETTLE_CHECK_EVERY` steps the fit looks which elements are settled:

    * with ``skip_settled``, the later steps compute the soft rounding and Adam's update of
      the unsettled elements only (:mod:`~adaround_lightning.engine.fit.active_set`; the
      same integers up to float rounding);
    * with ``stop_when_binary``, the fit ends once every element is settled (after the warm
      start); :attr:`steps_run` records where.
    """

    def __init__(
        self,
        quantizers: list[AdaroundFakeQuantizer],
        frozen: nn.Module,
        loss: AdaptiveRoundingLoss,
        lr: float,
        name: str,
        steps_per_batch: int = 1,
        stop_when_binary: bool = False,
        scale_lr: float | None = None,
        skip_settled: bool = False,
        straight_through: bool = False,
    ) -> None:
        super().__init__()
        # K > 1: each training step runs K optimizer steps on a (K, batch, ...) batch under
        # manual optimization, so Lightning's per-step overhead is paid once per K steps.
        # Every optimizer.step() advances global_step, so curr_iter stays the true step.
        self.steps_per_batch = steps_per_batch
        self.automatic_optimization = steps_per_batch == 1
        if not all(q.initialized for q in quantizers):
            raise ValueError("initialise each quantizer with one forward of its weight first")
        self.loss = loss
        self.channel_dim = 1  # the output-channel axis of the reconstruction (subclasses set it)
        self.lr = lr
        self.name = name
        self.stop_when_binary = stop_when_binary
        self.skip_settled = skip_settled
        # Straight-through: every step sees the hard rounding 1[V >= 0] that the fit ends with
        # (h(V)'s gradient, no regularizer), so nothing is lost when the relaxation is cut
        # short, as in a 200-step fit of a large block.
        self.straight_through = straight_through
        #: Per quantizer, the elements of ``V`` still trained (all of them until a compaction).
        self.roundings = [ActiveRounding(q, q.V) for q in quantizers]
        #: Optimizer steps taken (fewer than ``loss.max_iter`` after an early stop).
        self.steps_run = 0
        for parameter in frozen.parameters():
            parameter.requires_grad_(False)
        for quantizer in quantizers:
            quantizer.V.requires_grad_(True)
            quantizer.use_soft_rounding = True
        # With a learned scale (scale_lr set): one log-ratio rho per scale, (C, 1, ...), (C, K/G)
        # with groups, or (), so W~ = exp(rho) * s0 * (clip(floor(W/s0) + z + h(V)) - z).
        self.scale_lr = scale_lr
        self.log_scale_ratios = nn.ParameterList(
            [nn.Parameter(q.scale.new_zeros(q.scale_count_shape)) for q in quantizers]
            if scale_lr
            else []
        )
        beta, reg_weight = loss.schedule()
        self.register_buffer("beta", beta, persistent=False)
        self.register_buffer("reg_weight", reg_weight, persistent=False)
        self.register_buffer("history", torch.zeros(loss.max_iter, 2), persistent=False)

    def rounding_quantizers(self) -> list[AdaroundFakeQuantizer]:
        """The quantizers whose ``V`` is trained."""
        raise NotImplementedError

    def network_part(self) -> nn.Module:
        """The module of the quantized network that this fit optimises (a layer or a block)."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> RoundingReconstruction:
        # Lightning switches to train mode for the fit; the network part must keep its eval
        # behaviour (no dropout, frozen statistics): only V is being trained.
        super().train(mode)
        self.network_part().eval()
        return self

    def soft_output(
        self, x: torch.Tensor, weights: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The output with soft-quantized weights.

        ``weights``: one ``W~`` per quantizer, in :meth:`rounding_quantizers` order; None
        computes them from ``V``.
        """
        raise NotImplementedError

    def apply_hard_weights(self) -> None:
        """Write ``s * q`` into the quantized network's modules."""
        raise NotImplementedError

    def configure_optimizers(self) -> Any:
        groups: list[dict] = [{"params": [q.V for q in self.rounding_quantizers()]}]
        if self.scale_lr:
            groups.append({"params": list(self.log_scale_ratios), "lr": self.scale_lr})
        adam = rounding_adam(groups, self.lr, self.device)
        if not self.straight_through:
            return adam
        # Straight-through: nothing anneals the roundings to rest, so the learning rate does,
        # linearly to 0 (as AutoRound's); the last steps flip only the closest calls.
        steps = self.loss.max_iter
        decay = torch.optim.lr_scheduler.LambdaLR(adam, lambda step: max(0.0, 1.0 - step / steps))
        return {"optimizer": adam, "lr_scheduler": {"scheduler": decay, "interval": "step"}}

    def on_train_start(self) -> None:
        if self.skip_settled and self.trainer.world_size > 1:
            # DDP's reducer all-reduces the module's own parameters: a compacted V is not one.
            self.skip_settled = False
            _log_skip_settled_off()

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor | None:
        # (inputs, targets) or, with Fisher weights (adaround.fisher), (inputs, targets, weights).
        inputs, targets, *weighted = batch
        error_weights = weighted[0] if weighted else None
        if self.automatic_optimization:
            curr_iter = self.trainer.global_step
            if self._settled_at(curr_iter):
                self.trainer.should_stop = True
                return None
            self.steps_run = curr_iter + 1
            return self._loss(inputs, targets, curr_iter, error_weights)
        optimizer = self.optimizers()
        for k in range(inputs.shape[0]):
            curr_iter = self.trainer.global_step  # advanced by every optimizer.step()
            if curr_iter >= self.loss.max_iter:
                break
            if self._settled_at(curr_iter):
                self.trainer.should_stop = True
                break
            step_weights = None if error_weights is None else error_weights[k]
            loss = self._loss(inputs[k], targets[k], curr_iter, step_weights)
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            optimizer.step()
            if self.straight_through:
                self.lr_schedulers().step()  # type: ignore[union-attr]
            self.steps_run = curr_iter + 1
        return None

    def _settled_at(self, curr_iter: int) -> bool:
        """Every :data:`SETTLE_CHECK_EVERY` steps: compact; True to stop (all settled)."""
        if curr_iter == 0 or curr_iter % SETTLE_CHECK_EVERY:
            return False
        if not (self.skip_settled or self.stop_when_binary):
            return False
        all_settled = self._track_settled()
        return self.stop_when_binary and all_settled and curr_iter >= self.loss.warm_start_end

    @torch.no_grad()
    def _track_settled(self) -> bool:
        """Compact the roundings that shrank enough (``skip_settled``); True if all settled.

        One host sync for all quantizers (their counts of unsettled elements).
        """
        optimizer = self.trainer.optimizers[0]
        keeps = [unsettled(rounding.parameter) for rounding in self.roundings]
        counts = torch.stack([keep.sum() for keep in keeps]).tolist()
        for rounding, keep, count in zip(self.roundings, keeps, counts, strict=True):
            if self.skip_settled and count <= COMPACT_BELOW * rounding.tracked:
                old = rounding.parameter
                swap_parameter(optimizer, old, rounding.compact(keep), keep)
        return sum(counts) == 0

    def _loss(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        curr_iter: int,
        error_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Both terms at ``curr_iter`` (0 in the first step); returns their sum.

        ``error_weights``: per-element weights of the reconstruction error (Fisher), or None.
        """
        if curr_iter >= self.loss.max_iter:
            raise ValueError(
                f"step {curr_iter} is past the loss schedule ({self.loss.max_iter} steps)"
            )
        # Warm start: no regularizer. A Python-int comparison, so no host sync.
        regularized = curr_iter >= self.loss.warm_start_end and not self.straight_through
        beta = self.beta[curr_iter] if regularized else None
        # W~ and f_reg of every quantizer in one fused op each (quant/soft_rounding.py).
        soft = [rounding.soft(beta, self.straight_through) for rounding in self.roundings]
        weights = [weight for weight, _ in soft]
        if self.scale_lr:
            weights = [
                rounding.quantizer.scale_by(w, rho.exp())
                for w, rho, rounding in zip(
                    weights, self.log_scale_ratios, self.roundings, strict=True
                )
            ]
        outputs = self.soft_output(inputs, weights)
        reconstruction = self.loss.reconstruction_loss(
            outputs,
            targets.to(outputs.dtype),
            self.output_channel_dim(targets.shape),
            error_weights,
        )
        if regularized:
            f_reg = sum(regularizer for _, regularizer in soft)
            regularization = self.reg_weight[curr_iter] * f_reg
        else:
            regularization = reconstruction.new_zeros(())
        self.history[curr_iter, 0] = reconstruction.detach()
        self.history[curr_iter, 1] = regularization.detach()
        return reconstruction + regularization

    def output_channel_dim(self, _output_shape: torch.Size) -> int:
        """The axis the reconstruction error is summed over (the output's channels)."""
        return self.channel_dim

    def on_train_epoch_end(self) -> None:
        # One log call per fit, not per step (self.log costs Python time on every call): the
        # means over all steps, computed on the device from history; under DDP one all-reduce.
        steps = max(1, self.steps_run)
        means = self.history[:steps].mean(0)
        for index, term in enumerate(("reconstruction", "regularization")):
            self.log(
                f"{self.name}/{term}_mean",
                means[index],
                on_step=False,
                on_epoch=True,
                sync_dist=True,
            )

    def loss_curve(self, points: int = 200) -> list[list[float]]:
        """``[step, reconstruction, regularization]`` rows, at most ``points`` (one host copy)."""
        steps = max(1, self.steps_run)
        stride = max(1, steps // points)
        rows = self.history[:steps:stride].cpu().tolist()
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
        for rounding in self.roundings:
            rounding.sync()
        for quantizer in self.rounding_quantizers():
            quantizer.use_soft_rounding = False
            quantizer.V.requires_grad_(False)
        for quantizer, rho in zip(self.rounding_quantizers(), self.log_scale_ratios, strict=False):
            quantizer.rescale(rho.detach().exp())
        with torch.no_grad():
            self.apply_hard_weights()


class LayerReconstruction(RoundingReconstruction):
    """Learns ``V`` of one layer's :class:`AdaroundFakeQuantizer` (paper eq. 25).

    Only ``V`` is trained, with Adam. Each step computes ``f_a(W~ x~)`` with the soft-quantized
    weight and both loss terms at ``curr_iter = trainer.global_step``. When fit ends, ``layer``
    (the module of the quantized network) receives the hard-rounded weight ``s * q``.

    Args:
        layer: The Conv/Linear module of the quantized network (still holding its float weight).
        quantizer: Its quantizer, already initialised from the weight (one forward).
        loss: The AdaRound loss, whose ``max_iter`` equals the number of training steps.
        activation: The activation that directly follows the layer, or None.
        lr: Adam's learning rate.
        name: Prefix of the logged metrics (the layer's name), so that one logger serves all
            layers of a run.
        steps_per_batch: Optimizer steps per Lightning training step (batches of shape
            ``(K, batch, ...)``); 1 is plain automatic optimization.
        input_quantizer: Fake-quantizes the cached inputs in every step (activation
            quantization in the loop; its ``drop_prob`` gives QDrop), or None.
        stop_when_binary: End the fit once every ``h(V)`` is clipped to 0 or 1 (same result).
        scale_lr: Learn each scale's log-ratio with this learning rate (None: fixed grid).
        skip_settled: Train only the elements whose ``h(V)`` is not yet clipped (same result).
        straight_through: Forward the hard rounding with ``h(V)``'s gradient, no regularizer.

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
        steps_per_batch: int = 1,
        input_quantizer: nn.Module | None = None,
        stop_when_binary: bool = False,
        scale_lr: float | None = None,
        skip_settled: bool = False,
        straight_through: bool = False,
    ) -> None:
        super().__init__(
            [quantizer],
            layer,
            loss,
            lr,
            name,
            steps_per_batch,
            stop_when_binary,
            scale_lr,
            skip_settled,
            straight_through,
        )
        self.layer = layer
        self.quantizer = quantizer
        self.channel_dim = channel_dim(layer)
        self.activation = functional_activation(activation)
        self.input_quantizer = input_quantizer

    def rounding_quantizers(self) -> list[AdaroundFakeQuantizer]:
        return [self.quantizer]

    def network_part(self) -> nn.Module:
        return self.layer

    def soft_output(
        self, x: torch.Tensor, weights: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``f_a(W~ x)`` with the soft-quantized weight ``W~`` of eq. (22)."""
        if weights is None:
            weights = [self.quantizer.quantize_with(rectified_sigmoid(self.quantizer.V))]
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        out = forward_with_weight(self.layer, x, weights[0])
        return self.activation(out) if self.activation is not None else out

    def apply_hard_weights(self) -> None:
        self.layer.weight.copy_(self.quantizer.hard_weight().to(self.layer.weight.dtype))


class BlockReconstruction(RoundingReconstruction):
    """Learns the ``V`` of every layer of a block together (BRECQ-style block reconstruction).

    The objective is the block-output error ``||B(x) - B~(x~)||^2`` (same conventions as the
    layer loss) plus the sum of the layers' rounding regularizers; ``x~`` is the block's input
    in the quantized network and the target ``B(x)`` the float block's output.

    Args:
        block: The block module of the quantized network (its layers still hold float weights).
        quantizers: Per layer name *relative to the block*, its initialised quantizer.
        loss: The AdaRound loss, whose ``max_iter`` equals the number of training steps.
        lr: Adam's learning rate.
        name: Prefix of the logged metrics (the block's name).
        steps_per_batch: Optimizer steps per Lightning training step.
        stop_when_binary: End the fit once every ``h(V)`` is clipped to 0 or 1 (same result).
        scale_lr: Learn each scale's log-ratio with this learning rate (None: fixed grid).
        skip_settled: Train only the elements whose ``h(V)`` is not yet clipped (same result).
        straight_through: Forward the hard rounding with ``h(V)``'s gradient, no regularizer.

    Example:
        >>> block = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> fqs = {"0": AdaroundFakeQuantizer(quant_min=-8, quant_max=7),
        ...        "2": AdaroundFakeQuantizer(quant_min=-8, quant_max=7)}
        >>> for name, fq in fqs.items():
        ...     _ = fq(block.get_submodule(name).weight)
        >>> module = BlockReconstruction(block, fqs, AdaptiveRoundingLoss(max_iter=10), 1e-3)
    """

    def __init__(
        self,
        block: nn.Module,
        quantizers: dict[str, AdaroundFakeQuantizer],
        loss: AdaptiveRoundingLoss,
        lr: float = 1e-3,
        name: str = "block",
        steps_per_batch: int = 1,
        stop_when_binary: bool = False,
        scale_lr: float | None = None,
        skip_settled: bool = False,
        straight_through: bool = False,
    ) -> None:
        super().__init__(
            list(quantizers.values()),
            block,
            loss,
            lr,
            name,
            steps_per_batch,
            stop_when_binary,
            scale_lr,
            skip_settled,
            straight_through,
        )
        self.block = block
        # The block output's channel axis is read from its shape (output_channel_dim): a
        # transformer block outputs (N, ..., C), a CNN block or MaxViT's attention (N, C, ...).
        self.last_layer = block.get_submodule(list(quantizers)[-1])
        self.channel_dim = channel_dim(self.last_layer)
        self.layer_names = list(quantizers)
        # ModuleDict keys cannot contain dots.
        self.quantizers = nn.ModuleDict({n.replace(".", "/"): q for n, q in quantizers.items()})

    def rounding_quantizers(self) -> list[AdaroundFakeQuantizer]:
        return [self.quantizers[n.replace(".", "/")] for n in self.layer_names]  # type: ignore[misc]

    def output_channel_dim(self, output_shape: torch.Size) -> int:
        """The axis of the block output whose size is its last layer's output channels.

        The last layer's own channel axis (-1 for Linear, 1 for Conv) where that size matches,
        else axis 1, then -1: CNBlock and MaxViT permute a Linear's ``(N, H, W, C)`` back to
        ``(N, C, H, W)``.
        """
        layer = self.last_layer
        width = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        for dim in (self.channel_dim, 1, -1):
            if len(output_shape) > 1 and output_shape[dim] == width:
                return dim
        return self.channel_dim

    def network_part(self) -> nn.Module:
        return self.block

    def soft_output(
        self, x: torch.Tensor, weights: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``B~(x)``: the block with every quantized weight soft-quantized."""
        if weights is None:
            weights = [q.quantize_with(rectified_sigmoid(q.V)) for q in self.rounding_quantizers()]
        by_name = {
            f"{n}.weight": weight for n, weight in zip(self.layer_names, weights, strict=True)
        }
        return torch.func.functional_call(self.block, by_name, (x,), strict=False)

    def apply_hard_weights(self) -> None:
        for name, quantizer in zip(self.layer_names, self.rounding_quantizers(), strict=True):
            layer = self.block.get_submodule(name)
            layer.weight.copy_(quantizer.hard_weight().to(layer.weight.dtype))

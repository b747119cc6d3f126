"""The network-level refinement: every layer's rounding trained jointly on the network's output.

Block reconstruction matches each block's output on its own and never sees how the errors of
the blocks add up at the network's output. After the walk, :class:`NetworkRefinement` trains the
``V`` of every quantized layer together (NWQ, PD-Quant), on

    L = D(f(x), f~(x)) + mu * mean_b ||B_b(x) - B~_b(x~)||^2 / ||B_b(x)||^2
        + lambda * sum_l sum_ij f_reg(h(V_l,ij); beta)

* ``D``: for a classifier's ``(N, classes)`` scores the KL divergence of the float network's
  prediction from the quantized one's (PD-Quant's prediction difference); for other outputs
  (segmentation maps, features, detection heads) their relative squared error.
* the block term: each block's relative output error, with the quantized network's own block
  inputs, as in the walk; ``mu`` keeps the refinement near the block solution and keeps it from
  fitting the few calibration images at the network's output alone.
* the rounding term with the annealed ``beta`` of eq. (24) after a warm start, as in every fit.

The forward always uses the *hard* rounding ``floor(W/s) + 1[V >= 0]``; ``h(V)`` carries the
gradient (straight-through). The walk leaves every ``h(V)`` binary, where the rectified sigmoid
passes no gradient: restarting ``h(V)`` at ``h_0`` on the side of the walk's rounding makes the
rounding trainable again, and the straight-through forward means the network being trained is the
one exported at every step (a soft relaxation started from a binary solution measured 0.8 of KL
from it at the first step, and ended where it began).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from adaround_lightning.engine.fit.adam import rounding_adam
from adaround_lightning.engine.fit.reconstruction import SETTLE_CHECK_EVERY
from adaround_lightning.graph.outputs import output_tensors
from adaround_lightning.quant.loss import AdaptiveRoundingLoss
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer, rectified_sigmoid
from adaround_lightning.quant.soft_rounding import unsettled

__all__ = ["NetworkRefinement", "output_divergence", "start_V"]

log = logging.getLogger(__name__)


def start_V(quantizer: AdaroundFakeQuantizer, start_h: float) -> torch.Tensor:
    """``V`` with ``h(V) = start_h`` where the quantizer rounds up and ``1 - start_h`` elsewhere.

    Example:
        >>> fq = AdaroundFakeQuantizer(quant_min=-8, quant_max=7)
        >>> _ = fq(torch.tensor([[0.9, -0.7, 0.2]]))
        >>> (fq.V >= 0).tolist()
        [[False, True, True]]
        >>> torch.allclose(rectified_sigmoid(start_V(fq, 0.7)), torch.tensor([[0.3, 0.7, 0.7]]))
        True
    """
    # h = sigmoid(V) (zeta - gamma) + gamma  =>  V = logit((h - gamma) / (zeta - gamma))
    p = (start_h - quantizer.gamma) / (quantizer.zeta - quantizer.gamma)
    v0 = math.log(p / (1 - p))
    up = quantizer.V.detach() >= 0
    return torch.where(up, v0, -v0).to(torch.float32)


def _relative_error(quantized: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||q - t||^2 / ||t||^2`` (means), 0-d."""
    return (quantized - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)


def output_divergence(quantized: object, target: object) -> torch.Tensor:
    """The distance of the quantized network's output from the float network's.

    ``(N, classes)`` scores: ``KL(softmax(target) || softmax(quantized))``, mean over samples;
    any other tensor: its relative squared error. Several tensors (a dict, a tuple): the sum.

    Example:
        >>> z = torch.randn(4, 10)
        >>> float(output_divergence(z, z)), float(output_divergence({"out": z}, {"out": z}))
        (0.0, 0.0)
    """
    total = torch.zeros(())
    for q, t in zip(output_tensors(quantized), output_tensors(target), strict=True):
        if not q.is_floating_point():
            continue
        if q.ndim == 2 and q.shape[1] > 1:
            log_q, log_t = F.log_softmax(q.float(), 1), F.log_softmax(t.float(), 1)
            term = F.kl_div(log_q, log_t, log_target=True, reduction="batchmean")
        else:
            term = _relative_error(q.float(), t.float())
        total = total.to(term.device) + term
    return total


class _BlockOutputs:
    """Forward hooks keeping the last output of each named block of a network."""

    def __init__(self, network: nn.Module, blocks: list[str]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [
            network.get_submodule(name).register_forward_hook(self._keeper(name)) for name in blocks
        ]

    def _keeper(self, name: str) -> Callable[[nn.Module, object, object], None]:
        def keep(_module: nn.Module, _inputs: object, output: object) -> None:
            tensors = output_tensors(output)
            if tensors:
                self.outputs[name] = tensors[0]

        return keep

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.outputs.clear()


class NetworkRefinement(L.LightningModule):
    """Trains the ``V`` of every quantized layer of a network together on its output.

    One training step: the float network's output and block outputs on a batch of calibration
    inputs (no gradient), the quantized network's with every layer at ``s * (floor(W/s) +
    1[V >= 0])`` (gradient to ``V`` through ``h(V)``), and the loss of the module docstring at
    ``curr_iter = trainer.global_step``. Every :data:`SETTLE_CHECK_EVERY` steps after the warm
    start it looks whether every ``h(V)`` is clipped to 0 or 1; then the rounding is final and
    the fit ends (:attr:`steps_run`). When the fit ends each quantizer receives the new ``V``
    and each layer ``s * q``.

    The networks and quantizers are not submodules: only ``V`` (and the scales' log-ratios)
    are this module's parameters, so DDP all-reduces exactly those and Lightning moves nothing
    else.

    Args:
        q_model: The quantized network; its quantized layers are named as in ``quantizers``.
        fp_model: The float network.
        quantizers: Per quantized layer name, its fitted quantizer.
        blocks: Names of the blocks whose outputs enter the block term.
        loss: The rounding regularizer's schedule (``max_iter`` = the steps of the fit).
        lr: Adam's learning rate of ``V``.
        block_weight: ``mu``, the weight of the block term (0: the output alone).
        start_h: ``h(V)`` at the start, on the side of the walk's rounding (in (0.5, 1)).
        scale_lr: Learn each scale's log-ratio with this learning rate (None: fixed grids).

    Example:
        >>> from adaround_lightning.quant.loss import AdaptiveRoundingLoss
        >>> from adaround_lightning.quant.factory import quantizer_for_weight
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> fqs = {n: quantizer_for_weight(net.get_submodule(n).weight, 2, True, "minmax")
        ...        for n in ("0", "2")}
        >>> module = NetworkRefinement(net, net, fqs, [], AdaptiveRoundingLoss(max_iter=8), 0.01)
        >>> [tuple(V.shape) for V in module.V]
        [(8, 4), (3, 8)]
    """

    def __init__(
        self,
        q_model: nn.Module,
        fp_model: nn.Module,
        quantizers: dict[str, AdaroundFakeQuantizer],
        blocks: list[str],
        loss: AdaptiveRoundingLoss,
        lr: float,
        block_weight: float = 0.1,
        start_h: float = 0.7,
        scale_lr: float | None = None,
    ) -> None:
        super().__init__()
        self.networks = (q_model, fp_model)  # a tuple: not registered as submodules
        self.names = list(quantizers)
        self.quantizer_list = list(quantizers.values())
        self.blocks = list(blocks)
        self.loss, self.lr, self.block_weight, self.scale_lr = loss, lr, block_weight, scale_lr
        self.V = nn.ParameterList([nn.Parameter(start_V(q, start_h)) for q in self.quantizer_list])
        self.log_scale_ratios = nn.ParameterList(
            [nn.Parameter(q.scale.new_zeros(q.scale_count_shape)) for q in self.quantizer_list]
            if scale_lr
            else []
        )
        #: The walk's roundings, to count what the refinement changed.
        self.start_up = [q.V.detach() >= 0 for q in self.quantizer_list]
        #: Per quantizer, 1 where both roundings ``floor(W/s)`` and ``floor(W/s) + 1`` are on the
        #: grid: the gradient of ``clip(floor + h)`` for ``h`` in (0, 1). Clipping the hard value
        #: would pass none at the grid's ends, and the weights there could never flip back.
        self.both_on_grid = [
            ((q.weight_floor >= q.quant_min) & (q.weight_floor + 1 <= q.quant_max)).float()
            for q in self.quantizer_list
        ]
        beta, reg_weight = loss.schedule()
        self.register_buffer("beta", beta, persistent=False)
        self.register_buffer("reg_weight", reg_weight, persistent=False)
        #: Per step: ``[output divergence, block term, rounding term]``.
        self.register_buffer("history", torch.zeros(loss.max_iter, 3), persistent=False)
        self.steps_run = 0
        self._hooks: tuple[_BlockOutputs, _BlockOutputs] | None = None

    # ------------------------------------------------------------------ Lightning
    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups: list[dict] = [{"params": list(self.V)}]
        if self.scale_lr:
            groups.append({"params": list(self.log_scale_ratios), "lr": self.scale_lr})
        return rounding_adam(groups, self.lr, self.device)

    def train(self, mode: bool = True) -> NetworkRefinement:
        super().train(mode)
        for network in self.networks:  # eval behaviour: no dropout, frozen statistics
            network.eval()
        return self

    def on_train_start(self) -> None:
        q_model, fp_model = self.networks
        for network in self.networks:
            for parameter in network.parameters():
                parameter.requires_grad_(False)
        self._hooks = (_BlockOutputs(q_model, self.blocks), _BlockOutputs(fp_model, self.blocks))

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor | None:
        curr_iter = self.trainer.global_step
        if self._settled_at(curr_iter):
            self.trainer.should_stop = True
            return None
        self.steps_run = curr_iter + 1
        return self._loss(batch[0], curr_iter)

    def on_train_end(self) -> None:
        if self._hooks is not None:
            for hooks in self._hooks:
                hooks.remove()
        self.apply_rounding()
        if self.loggers:
            means = self.history[: max(1, self.steps_run)].mean(0).tolist()
            terms = ("output", "blocks", "regularization")
            metrics = {f"refinement/{t}_mean": m for t, m in zip(terms, means, strict=True)}
            for logger in self.loggers:
                logger.log_metrics(metrics, step=self.steps_run)
                logger.save()

    # ------------------------------------------------------------------ the loss
    def hard_weights(
        self, straight_through: bool = True, h: list[torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Per ``"{layer}.weight"``: ``s * clip(floor(W/s) + 1[V >= 0])``, shaped like the weight.

        ``straight_through``: the gradient of ``h(V)`` passes through the hard rounding (``h``:
        the ``h(V)`` of every quantizer when the caller has them, else computed here).
        """
        if straight_through and h is None:
            h = [rectified_sigmoid(V) for V in self.V]
        weights = {}
        for index, (name, quantizer, V) in enumerate(
            zip(self.names, self.quantizer_list, self.V, strict=True)
        ):
            floor = quantizer.weight_floor
            q = torch.clamp(floor + (V >= 0).to(V.dtype), quantizer.quant_min, quantizer.quant_max)
            if h is not None:
                q = q + self.both_on_grid[index] * (h[index] - h[index].detach())
            weight = quantizer.dequantize(q)
            if self.scale_lr:
                weight = quantizer.scale_by(weight, self.log_scale_ratios[index].exp())
            weights[f"{name}.weight"] = weight
        return weights

    def _loss(self, x: torch.Tensor, curr_iter: int) -> torch.Tensor:
        q_model, fp_model = self.networks
        assert self._hooks is not None
        q_blocks, fp_blocks = self._hooks
        with torch.no_grad():
            target = fp_model(x)
        h = [rectified_sigmoid(V) for V in self.V]  # once per step: the weights and f_reg
        weights = self.hard_weights(h=h)
        output = torch.func.functional_call(q_model, weights, (x,), strict=False)
        divergence = output_divergence(output, target)
        blocks = divergence.new_zeros(())
        if self.block_weight and self.blocks:
            errors = [
                _relative_error(q_blocks.outputs[name].float(), fp_blocks.outputs[name].float())
                for name in self.blocks
                if name in q_blocks.outputs and name in fp_blocks.outputs
            ]
            if errors:
                blocks = torch.stack(errors).mean()
        regularization = divergence.new_zeros(())
        if curr_iter >= self.loss.warm_start_end:  # a Python comparison: no host sync
            beta = self.beta[curr_iter]
            f_reg = sum(self.loss.regularizer_of_h(h_V, beta) for h_V in h)
            regularization = self.reg_weight[curr_iter] * f_reg
        self.history[curr_iter, 0] = divergence.detach()
        self.history[curr_iter, 1] = blocks.detach()
        self.history[curr_iter, 2] = regularization.detach()
        return divergence + self.block_weight * blocks + regularization

    @torch.no_grad()
    def _settled_at(self, curr_iter: int) -> bool:
        """True when every ``h(V)`` is clipped after the warm start (checked every 16 steps)."""
        if curr_iter == 0 or curr_iter % SETTLE_CHECK_EVERY:
            return False
        if curr_iter < self.loss.warm_start_end:
            return False
        return int(sum(unsettled(V).sum() for V in self.V)) == 0

    # ------------------------------------------------------------------ results
    @torch.no_grad()
    def flips(self) -> int:
        """Weights whose rounding differs from the walk's."""
        changed = [((V >= 0) != up).sum() for V, up in zip(self.V, self.start_up, strict=True)]
        return int(sum(changed))

    @torch.no_grad()
    def apply_rounding(self) -> None:
        """Give each quantizer the new ``V`` (and scale) and each layer ``s * q``."""
        q_model = self.networks[0]
        for index, (name, quantizer, V) in enumerate(
            zip(self.names, self.quantizer_list, self.V, strict=True)
        ):
            quantizer.V = nn.Parameter(
                V.detach().clone().to(quantizer.V.dtype), requires_grad=False
            )
            quantizer.use_soft_rounding = False
            if self.scale_lr:
                ratio = self.log_scale_ratios[index].detach().exp()
                quantizer.rescale(ratio)
            layer = q_model.get_submodule(name)
            layer.weight.copy_(quantizer.hard_weight().to(layer.weight.dtype))

    def loss_curve(self, points: int = 200) -> list[list[float]]:
        """``[step, output, blocks, regularization]`` rows, at most ``points`` (one host copy)."""
        steps = max(1, self.steps_run)
        stride = max(1, steps // points)
        rows = self.history[:steps:stride].cpu().tolist()
        return [[float(i * stride), *row] for i, row in enumerate(rows)]

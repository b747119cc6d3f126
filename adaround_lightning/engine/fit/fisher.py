"""Fisher-weighted block reconstruction (BRECQ, Li et al. 2021, arXiv 2102.05426, eq. 10).

A block's output error matters to the task as far as the network's output moves with it. BRECQ
weighs each element of the block-output error ``(B~(x~) - B(x))^2`` by the diagonal of the
Fisher information of that output, estimated by the squared gradient ``g^2`` of the loss of the
network's output with respect to the block's output ``z``:

    g = d KL(p_float(x) || p_quantized(x)) / d z,     p = softmax(network output, dim=1),

computed in the quantized network with the blocks before already rounded and the block itself
at round-to-nearest (its state when the fit starts), so no label is needed: the float network's
own prediction is the target. BRECQ damps the weight to ``(|g| + 1)^2``; its KL is averaged over
the batch, so ``|g|`` is about ``1 / batch`` and the weight stays close to 1 whatever ``g`` says.
This module normalises instead (``delta`` = ``adaround.fisher_damping``):

    w = (g^2 + delta m) / ((1 + delta) m),     m = mean of g^2 over the calibration set,

so the weights average exactly 1 (the reconstruction term keeps its size next to the rounding
regularizer, whose ``lambda`` is unchanged) and ``delta`` sets how far they may depart from the
plain error: 0 is the Fisher weight alone, large ``delta`` the unweighted error.

Example:
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    >>> images = torch.randn(16, 4)
    >>> logits = float_log_probabilities(net, images, chunk=8)
    >>> sums = FisherSums()
    >>> g2 = block_output_sensitivity(net, net[0], images, logits, 0, 16, sums)
    >>> g2.shape, bool(sums.mean() > 0)
    (torch.Size([16, 8]), True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adaround_lightning.core.distributed import ProcessContext, all_reduce_sum

__all__ = [
    "FisherSums",
    "FisherWeights",
    "block_output_sensitivity",
    "float_log_probabilities",
]


def _class_scores(output: object) -> torch.Tensor:
    """The network output as ``(N, classes, ...)`` scores, or a ValueError naming the fix."""
    if not isinstance(output, torch.Tensor) or output.dim() < 2:
        kind = type(output).__name__ if not isinstance(output, torch.Tensor) else "1-D tensor"
        raise ValueError(
            f"adaround.fisher needs a network whose output is one (N, classes) tensor of "
            f"scores, got a {kind}: set adaround.fisher=false"
        )
    return output.float()


@torch.no_grad()
def float_log_probabilities(model: nn.Module, images: torch.Tensor, chunk: int) -> torch.Tensor:
    """``log softmax`` of the float network's output over its dim 1, shape ``(N, classes, ...)``.

    Example:
        >>> net = nn.Linear(4, 3)
        >>> log_p = float_log_probabilities(net, torch.randn(5, 4), chunk=2)
        >>> log_p.shape, torch.allclose(log_p.exp().sum(1), torch.ones(5))
        (torch.Size([5, 3]), True)
    """
    pieces = [
        F.log_softmax(_class_scores(model(images[start : start + chunk])), dim=1)
        for start in range(0, images.shape[0], chunk)
    ]
    return torch.cat(pieces)


@dataclass
class FisherSums:
    """Running ``sum g^2`` and element count over the chunks of one block (all processes).

    Attributes:
        squared: Sum of ``g^2`` so far (this process), float64 on the device of the chunks
            (None before the first): no host sync until :meth:`mean`.
        count: Elements so far (this process).
    """

    squared: torch.Tensor | None = None
    count: int = 0

    def add(self, g2: torch.Tensor) -> None:
        """Count a chunk of ``g^2``."""
        chunk = g2.sum(dtype=torch.float64)
        self.squared = chunk if self.squared is None else self.squared + chunk
        self.count += g2.numel()

    def mean(self, process: ProcessContext | None = None) -> float:
        """``m``: the mean of ``g^2`` over every chunk of every process (one host sync)."""
        device = process.device if process is not None else None
        squared = self.squared if self.squared is not None else torch.zeros((), device=device)
        totals = torch.stack([squared.double(), squared.new_tensor(float(self.count)).double()])
        if process is not None:
            totals = all_reduce_sum(totals.to(process.device), process)
        total, count = totals.tolist()
        return total / count if count > 0 else 0.0


class _OutputLeaf:
    """Forward hook: the block's output becomes a leaf that records the rest of the pass.

    The pass runs under ``no_grad`` up to the block (nothing before it is differentiated);
    the hook turns gradient recording on, so backward runs through the network's tail only.
    """

    def __init__(self) -> None:
        self.leaf: torch.Tensor | None = None

    def __call__(self, _module: nn.Module, _args: tuple, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise ValueError(
                f"adaround.fisher weighs a block's output, and this block returns a "
                f"{type(output).__name__}: set adaround.fisher=false"
            )
        torch.set_grad_enabled(True)  # restored by the caller's no_grad block on exit
        self.leaf = output.detach().float().requires_grad_(True)
        # A copy, not the leaf: the network may work in place on what the block returned.
        return self.leaf.to(output.dtype, copy=True)


def block_output_sensitivity(
    q_model: nn.Module,
    q_block: nn.Module,
    images: torch.Tensor,
    float_log_probs: torch.Tensor,
    start: int,
    stop: int,
    sums: FisherSums,
) -> torch.Tensor:
    """``g^2`` of rows ``start .. stop``: the squared gradient of the KL at ``q_block``'s output.

    Args:
        q_model: The network being quantized, as the fit of ``q_block`` starts.
        q_block: The block whose output is differentiated.
        images: The calibration inputs of this process.
        float_log_probs: :func:`float_log_probabilities` of the float network on ``images``.
        start: First row.
        stop: One past the last row.
        sums: Receives this chunk's ``sum g^2`` and count.

    Returns:
        ``g^2`` in float32, shaped like the block's output on those rows.
    """
    hook = _OutputLeaf()
    handle = q_block.register_forward_hook(hook)
    try:
        with torch.no_grad():
            scores = _class_scores(q_model(images[start:stop]))
            target = float_log_probs[start:stop].to(scores.device)
            # Summed, not averaged: a row's gradient does not depend on the chunk it is in.
            kl = F.kl_div(F.log_softmax(scores, dim=1), target, log_target=True, reduction="sum")
            if hook.leaf is None:
                raise ValueError("the block did not run in the network's forward pass")
            (grad,) = torch.autograd.grad(kl, hook.leaf)
    finally:
        handle.remove()
    g2 = grad.pow(2)
    sums.add(g2)
    return g2


@dataclass(frozen=True)
class FisherWeights:
    """Per-element weights ``w = (g^2 + delta m) / ((1 + delta) m)`` of a cached ``g^2``.

    Rows are read like a cached buffer's (``weights[index]``) and normalised on the way, so
    the buffer itself holds raw ``g^2`` in float32 (it would underflow in float16).

    Attributes:
        squared_gradients: The cached ``g^2``, shape ``(N, ...)`` like the block's targets.
        mean: ``m``, the mean of ``g^2`` (> 0).
        damping: ``delta`` (>= 0).

    Example:
        >>> w = FisherWeights(torch.tensor([[0.0, 2.0], [4.0, 2.0]]), mean=2.0, damping=1.0)
        >>> w[torch.tensor([0, 1])]
        tensor([[0.5000, 1.0000],
                [1.5000, 1.0000]])
    """

    squared_gradients: object  # a CachedTensor or a tensor: anything indexed by rows
    mean: float
    damping: float

    def __post_init__(self) -> None:
        if not self.mean > 0:
            raise ValueError(f"the mean of g^2 must be > 0, got {self.mean}")
        if not self.damping >= 0:
            raise ValueError(f"adaround.fisher_damping must be >= 0, got {self.damping}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.squared_gradients.shape)  # type: ignore[attr-defined]

    def __getitem__(self, index: torch.Tensor | slice) -> torch.Tensor:
        g2 = self.squared_gradients[index]  # type: ignore[index]
        floor = self.damping * self.mean
        return (g2 + floor).mul_(1.0 / ((1.0 + self.damping) * self.mean))

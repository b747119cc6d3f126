"""A finished layer's report: output MSE of round-to-nearest and of AdaRound on the same grid."""

from __future__ import annotations

import torch
from torch import nn

from adaround_lightning.core.distributed import ProcessContext, all_reduce_sum
from adaround_lightning.engine.cache.storage import CachedTensor
from adaround_lightning.engine.records.results import LayerReport
from adaround_lightning.graph.functional import forward_with_weight
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer

__all__ = ["layer_report", "output_mse"]


@torch.no_grad()
def output_mse(
    layer: nn.Module,
    weights: dict[str, torch.Tensor],
    activation: nn.Module | None,
    inputs: torch.Tensor | CachedTensor,
    targets: torch.Tensor | CachedTensor,
    chunk: int,
    context: ProcessContext,
    input_quantizer: nn.Module | None = None,
) -> dict[str, float]:
    """Per named weight, the mean squared error of ``f_a(weight x)`` against ``targets``.

    One pass over the cached samples serves every weight (each chunk of inputs and targets is
    read once, which matters when they are on disk). The differences are float32, their
    squares are summed in float64. Under DDP each process holds a shard: the sums are added
    over all processes.

    Example:
        >>> lin, x = nn.Linear(3, 2), torch.randn(8, 3)
        >>> single = ProcessContext(torch.device("cpu"), 0, 1)
        >>> output_mse(lin, {"same": lin.weight}, None, x, lin(x).detach(), 4, single)
        {'same': 0.0}
    """
    totals = torch.zeros(len(weights), dtype=torch.float64, device=inputs.device)
    for start in range(0, inputs.shape[0], chunk):
        x = inputs[start : start + chunk]
        if input_quantizer is not None:
            x = input_quantizer(x)
        target = targets[start : start + chunk]
        for index, weight in enumerate(weights.values()):
            out = forward_with_weight(layer, x, weight)
            if activation is not None:
                out = activation(out)
            totals[index] += out.sub_(target).square_().sum(dtype=torch.float64)
    count = torch.tensor(float(targets.numel()), dtype=torch.float64, device=totals.device)
    totals, count = all_reduce_sum(totals, context), all_reduce_sum(count, context)
    return dict(zip(weights, (totals / count).tolist(), strict=True))


def layer_report(
    name: str,
    layer: nn.Module,
    quantizer: AdaroundFakeQuantizer,
    mse: dict[str, float],
    activation: str | None,
    seconds: float,
    iters: int,
    curve: list[list[float]],
) -> LayerReport:
    """The report of layer ``name`` whose rounding ``quantizer`` holds.

    Args:
        name: Module name.
        layer: The module of the quantized network.
        quantizer: Its finished quantizer.
        mse: ``{"nearest": ..., "adaround": ...}`` output MSEs (see :func:`output_mse`).
        activation: Name of the activation in the target, if any.
        seconds: Wall time of the layer.
        iters: Optimisation steps.
        curve: Loss curve rows.

    Example:
        >>> from adaround_lightning.quant.factory import quantizer_for_weight
        >>> lin = nn.Linear(3, 2)
        >>> fq = quantizer_for_weight(lin.weight, 4, True, "minmax")
        >>> mse = {"nearest": 0.2, "adaround": 0.1}
        >>> layer_report("fc", lin, fq, mse, None, 1.0, 10, []).flipped_fraction
        0.0
    """
    flipped = quantizer.integer_weight() != quantizer.nearest_integer_weight()
    return LayerReport(
        name=name,
        type=type(layer).__name__,
        weight_shape=list(layer.weight.shape),
        bits=quantizer.bits,
        per_channel=quantizer.is_per_channel,
        group_size=quantizer.group_size,
        activation=activation,
        mse_nearest=mse["nearest"],
        mse_adaround=mse["adaround"],
        flipped_fraction=float(flipped.float().mean()),
        seconds=seconds,
        iters=iters,
        loss_curve=curve,
    )

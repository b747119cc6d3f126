"""The per-layer steps every front end's walk takes, written once.

A front end (:mod:`~adaround_lightning.torch_frontend` or :mod:`~adaround_lightning.onnx_frontend`)
decides how a layer's inputs are sampled and where its weights live; what happens to a layer once
its module (a PyTorch ``nn.Conv*``/``nn.Linear`` holding the weight being rounded) is known is the
same in both:

===========================  ==================================================================
step                         what it does
===========================  ==================================================================
:func:`restore_layer`        a checkpointed layer gets its quantizer, ``s * q`` and bias back
:func:`correct_bias`         the mean output error of the rounded layer moves into its bias
:func:`layer_checkpoint`     the record a resume reads (quantizer state, bias, input grid)
:func:`log_finished_layer`   the one log line per finished layer
===========================  ==================================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from adaround_lightning.core.distributed import ProcessContext
from adaround_lightning.engine.records.checkpoint import ActivationGrid, LayerCheckpoint
from adaround_lightning.engine.records.results import LayerReport
from adaround_lightning.graph.bias_correction import BiasCorrection
from adaround_lightning.quant.activations import ActivationQuantizer
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer

__all__ = [
    "correct_bias",
    "corrected_bias",
    "corrects_bias",
    "layer_checkpoint",
    "log_finished_layer",
    "restore_layer",
]

log = logging.getLogger("adaround_lightning.engine")

#: Rows ``[start, stop)`` of a layer's output, float or quantized: ``(rows, C, ...)``.
OutputRows = Callable[[int, int], torch.Tensor]


@torch.no_grad()
def restore_layer(
    layer: nn.Module, entry: LayerCheckpoint, device: torch.device
) -> AdaroundFakeQuantizer:
    """Give ``layer`` the hard-rounded weight ``s * q`` (and bias) of a checkpointed layer.

    Returns:
        The layer's quantizer, on ``device``, in hard-rounding mode.

    Example:
        >>> from adaround_lightning.quant.factory import quantizer_for_weight
        >>> from adaround_lightning.engine.records.checkpoint import LayerCheckpoint
        >>> layer = nn.Linear(3, 2)
        >>> quantizer = quantizer_for_weight(layer.weight, 4, True, "minmax")
        >>> report = LayerReport("fc", "Linear", [2, 3], 4, True, None, 0, 0, 0, 0, 1)
        >>> entry = layer_checkpoint(quantizer, report, per_channel=True)
        >>> _ = restore_layer(layer, entry, torch.device("cpu"))
        >>> bool(torch.equal(layer.weight, quantizer.hard_weight()))
        True
    """
    quantizer = entry.quantizer(device)
    layer.weight.copy_(quantizer.hard_weight().to(layer.weight.dtype))
    if entry.bias is not None:  # bias_correction
        layer.bias.copy_(entry.bias.to(layer.bias))
    return quantizer


def corrects_bias(enabled: bool, layer: nn.Module) -> bool:
    """Whether bias correction runs on ``layer``: it is on and the layer has a bias.

    Example:
        >>> corrects_bias(True, nn.Linear(2, 2)), corrects_bias(True, nn.Linear(2, 2, bias=False))
        (True, False)
    """
    return enabled and getattr(layer, "bias", None) is not None


def corrected_bias(enabled: bool, layer: nn.Module) -> torch.Tensor | None:
    """The layer's bias for its resume record when bias correction changed it, else None."""
    return layer.bias if corrects_bias(enabled, layer) else None


@torch.no_grad()
def correct_bias(
    layer: nn.Module,
    process: ProcessContext,
    rows: int,
    chunk: int,
    float_output: OutputRows,
    quantized_output: OutputRows,
) -> None:
    """Empirical bias correction of a rounded layer, over its outputs in chunks of rows.

    Args:
        layer: The rounded layer (with a bias), whose bias is shifted.
        process: This process and the others (the sums are all-reduced under DDP).
        rows: Calibration rows on this process.
        chunk: Rows per chunk.
        float_output: The float layer's pre-activation output on rows ``[start, stop)``.
        quantized_output: The rounded layer's output on the same rows of its quantized input.

    Example:
        >>> fp, q = nn.Linear(3, 2), nn.Linear(3, 2)
        >>> x = torch.randn(8, 3)
        >>> process = ProcessContext(torch.device("cpu"), 0, 1)
        >>> correct_bias(q, process, 8, 4, lambda a, b: fp(x[a:b]), lambda a, b: q(x[a:b]))
        >>> bool(torch.allclose(fp(x).mean(0), q(x).mean(0), atol=1e-5))
        True
    """
    correction = BiasCorrection(layer, process)
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        correction.add(float_output(start, stop), quantized_output(start, stop))
    correction.apply()


def layer_checkpoint(
    quantizer: AdaroundFakeQuantizer,
    report: LayerReport,
    per_channel: bool,
    bias: torch.Tensor | None = None,
    act_quantizer: ActivationQuantizer | None = None,
) -> LayerCheckpoint:
    """A finished layer's resume record, on the CPU.

    Args:
        quantizer: The layer's finished quantizer.
        report: Its report.
        per_channel: Per-channel scales or one per tensor.
        bias: The corrected bias (None: no bias correction, or no bias).
        act_quantizer: Its input grid when it was calibrated in the loop (restored with it).
    """
    return LayerCheckpoint(
        state={k: v.detach().cpu() for k, v in quantizer.state_dict().items()},
        bits=quantizer.bits,
        per_channel=per_channel,
        report=report,
        floor_scale=None if quantizer.floor_scale is None else quantizer.floor_scale.cpu(),
        bias=None if bias is None else bias.detach().cpu(),
        act_state=None if act_quantizer is None else ActivationGrid.of(act_quantizer),
    )


def log_finished_layer(index: int, total: int, report: LayerReport) -> None:
    """``[3/21] features.2.conv Conv2d W4: MSE nearest ... -> AdaRound ..., ..% flipped, 1.2s``."""
    log.info(
        "[%d/%d] %s %s W%d: MSE nearest %.3g -> AdaRound %.3g, %.1f%% flipped, %.1fs",
        index,
        total,
        report.name,
        report.type,
        report.bits,
        report.mse_nearest,
        report.mse_adaround,
        100 * report.flipped_fraction,
        report.seconds,
    )

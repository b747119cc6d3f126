"""Empirical bias correction of a rounded layer (Nagel et al. 2019, arXiv 1906.04721, sec. 4.2).

Rounding the weights, and the rounded layers before, shift the expected output of a layer:
``E[y_q] != E[y_fp]``. AdaRound's binary choice per weight cannot remove a per-channel offset
exactly; a float bias can. After a layer is rounded, its bias is moved by

    delta_c = mean_{n, spatial} (y_fp[n, c, ...] - y_q[n, c, ...])

measured on the calibration data (``y_fp``: the float layer in the float network; ``y_q``: the
quantized layer in the quantized network, pre-activation). ``delta`` is the constant per channel
that minimises ``E ||y_fp - (y_q + delta)||^2``, so the layer's output error can only go down on
the calibration data. Layers without a bias are left as they are (adding one would change the
architecture of the exported network).
"""

from __future__ import annotations

import torch
from torch import nn

from adaround_lightning.core.distributed import ProcessContext, all_reduce_sum
from adaround_lightning.graph.capture import capture_output

__all__ = ["channel_dim", "correct_bias_in_block", "mean_output_error", "shift_bias"]


def channel_dim(layer: nn.Module) -> int:
    """The output-channel axis of ``layer``'s output: 1 for convolutions, -1 for ``Linear``.

    Example:
        >>> channel_dim(nn.Linear(3, 2)), channel_dim(nn.Conv2d(3, 2, 1))
        (-1, 1)
    """
    return -1 if isinstance(layer, nn.Linear) else 1


def mean_output_error(
    float_output: torch.Tensor, quantized_output: torch.Tensor, dim: int
) -> torch.Tensor:
    """Per-channel mean of ``float_output - quantized_output``, shape ``(C,)``.

    Accumulated in float64, so a large calibration set does not lose the small offset.

    Args:
        float_output: The float layer's output, e.g. ``(N, C, H, W)``.
        quantized_output: The quantized layer's output, the same shape.
        dim: The channel axis (see :func:`channel_dim`).

    Example:
        >>> mean_output_error(torch.ones(4, 2), torch.zeros(4, 2), -1)
        tensor([1., 1.], dtype=torch.float64)
    """
    if float_output.shape != quantized_output.shape:
        raise ValueError(
            f"output shapes differ: {tuple(float_output.shape)} vs {tuple(quantized_output.shape)}"
        )
    error = float_output.double() - quantized_output.double()
    error = error.movedim(dim, 0).flatten(1)  # (C, N * spatial)
    return error.mean(1)


@torch.no_grad()
def shift_bias(layer: nn.Module, delta: torch.Tensor) -> bool:
    """Add ``delta`` (``(C,)``) to ``layer.bias`` in place; False (and no change) without a bias.

    Args:
        layer: The quantized Conv/Linear layer.
        delta: The per-channel shift, e.g. from :func:`mean_output_error`.

    Returns:
        Whether the layer had a bias to shift.

    Example:
        >>> layer = nn.Linear(3, 2)
        >>> x = torch.randn(8, 3)
        >>> shift_bias(layer, mean_output_error(layer(x) + 0.5, layer(x), channel_dim(layer)))
        True
    """
    bias = getattr(layer, "bias", None)
    if bias is None:
        return False
    if delta.shape != bias.shape:
        raise ValueError(
            f"bias shift of shape {tuple(delta.shape)} for a bias of {tuple(bias.shape)}"
        )
    bias.add_(delta.to(device=bias.device, dtype=bias.dtype))
    return True


@torch.no_grad()
def correct_bias_in_block(
    fp_block: nn.Module,
    q_block: nn.Module,
    fp_layer: nn.Module,
    q_layer: nn.Module,
    fp_block_inputs: torch.Tensor,
    q_block_inputs: torch.Tensor,
    chunk: int,
    context: ProcessContext,
) -> None:
    """Bias correction of ``q_layer`` (a rounded layer of ``q_block``) against the float block.

    Runs both blocks from their cached inputs up to the layer, chunk by chunk: the layer's whole
    output ``(N, C, H, W)`` twice would double the cache's peak memory. Sums in float64 over the
    chunks, then over the processes (one shard each). Layers without a bias are left alone.

    Example:
        >>> fp, q = nn.Sequential(nn.Linear(3, 2)), nn.Sequential(nn.Linear(3, 2))
        >>> x = torch.randn(8, 3)
        >>> single = ProcessContext(torch.device("cpu"), 0, 1)
        >>> correct_bias_in_block(fp, q, fp[0], q[0], x, x, 4, single)
        >>> bool(torch.allclose(fp(x).mean(0), q(x).mean(0), atol=1e-5))
        True
    """
    if getattr(q_layer, "bias", None) is None:
        return
    error_sum = torch.zeros(q_layer.bias.shape, dtype=torch.float64, device=q_block_inputs.device)
    count = torch.zeros((), dtype=torch.float64, device=q_block_inputs.device)
    for start in range(0, fp_block_inputs.shape[0], chunk):
        fp_output = capture_output(
            fp_block, fp_layer, fp_block_inputs[start : start + chunk], chunk
        )
        q_output = capture_output(q_block, q_layer, q_block_inputs[start : start + chunk], chunk)
        per_channel = fp_output.numel() / error_sum.numel()
        error_sum += mean_output_error(fp_output, q_output, channel_dim(q_layer)) * per_channel
        count += per_channel
    shift_bias(q_layer, all_reduce_sum(error_sum, context) / all_reduce_sum(count, context))

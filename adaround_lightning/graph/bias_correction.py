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

__all__ = ["BiasCorrection", "channel_dim", "mean_output_error", "shift_bias"]


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

    Summed in float64, so a large calibration set does not lose the small offset.

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
    # The difference in float32 (no float64 copies of both outputs), summed in float64 over
    # every axis but the channels, in whatever memory layout the outputs have.
    error = float_output.float() - quantized_output.float()
    channel = dim % error.dim()
    others = [axis for axis in range(error.dim()) if axis != channel]
    count = error.numel() // error.shape[channel]
    return error.sum(dim=others, dtype=torch.float64) / count


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


class BiasCorrection:
    """Accumulates ``delta`` of one layer over chunks of its outputs, then shifts its bias.

    Sums in float64 over the chunks, then over the processes (one shard each), so a large
    calibration set neither loses the small offset nor needs the layer's whole output at once.

    Args:
        layer: The rounded Conv/Linear layer of the quantized network (with a bias).
        context: This process and the others, for the sums.

    Example:
        >>> fp, q = nn.Linear(3, 2), nn.Linear(3, 2)
        >>> x = torch.randn(8, 3)
        >>> correction = BiasCorrection(q, ProcessContext(torch.device("cpu"), 0, 1))
        >>> for chunk in x.split(4):
        ...     correction.add(fp(chunk), q(chunk))
        >>> correction.apply()
        >>> bool(torch.allclose(fp(x).mean(0), q(x).mean(0), atol=1e-5))
        True
    """

    def __init__(self, layer: nn.Module, context: ProcessContext) -> None:
        if getattr(layer, "bias", None) is None:
            raise ValueError("bias correction needs a layer with a bias")
        self.layer = layer
        self.context = context
        self.dim = channel_dim(layer)
        device = layer.bias.device
        self.error_sum = torch.zeros(layer.bias.shape, dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, float_output: torch.Tensor, quantized_output: torch.Tensor) -> None:
        """One chunk of the float and the quantized layer's (pre-activation) output."""
        folded = float_output.shape != quantized_output.shape and self.dim == -1
        if folded and float_output.numel() == quantized_output.numel():
            # The same rows, one side per sample (n, k, ..., C), the other folded (n * k, ..., C).
            quantized_output = quantized_output.reshape(float_output.shape)
        per_channel = float_output.numel() / self.error_sum.numel()
        self.error_sum += mean_output_error(float_output, quantized_output, self.dim) * per_channel
        self.count += per_channel

    def apply(self) -> None:
        """Shift the bias by the mean error over every chunk and process."""
        total = all_reduce_sum(self.error_sum, self.context)
        shift_bias(self.layer, total / all_reduce_sum(self.count, self.context))

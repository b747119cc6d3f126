"""Integer weights exactly on the grid: extraction from quantizers, safetensors files, the state.

``quantized_weights.safetensors`` holds, per quantized layer, ``NAME.q`` (int8) and ``NAME.scale``
(float32, one per output channel or a scalar), with ``ch_axis``, bits and range in the metadata.
With activation quantization also ``NAME.input_scale`` (float32) and ``NAME.input_zero_point``
(int32) of the layer's input grid. ``adaround_state.pt`` (:func:`quantizer_states`) holds what
the grid check needs: per layer ``V``, ``floor(W/s)``, the scale and the range.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaround_lightning.quant.activations import ActivationQuantizer
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer

__all__ = [
    "GridCheckError",
    "QuantizedLayer",
    "load_input_quantizers",
    "load_quantized_weights",
    "quantized_layers",
    "quantizer_states",
    "save_quantized_weights",
]


class GridCheckError(RuntimeError):
    """An exported integer or weight is not what AdaRound's learned rounding gives."""


@dataclass
class QuantizedLayer:
    """One layer's integer weight and grid.

    Attributes:
        name: Module name; the weight is ``NAME.weight`` in the state_dict.
        q: The integers, int8, shape of the weight.
        scale: float32, shape ``(C,)`` per channel along ``ch_axis`` or ``()`` per tensor.
        ch_axis: Channel axis of per-channel scales, None per tensor.
        quant_min: Smallest integer of the grid.
        quant_max: Largest integer of the grid.
        group_size: Group-wise grid: ``scale`` is ``(C_out, K / group_size)``, one per
            ``group_size`` consecutive elements of a channel's ``K`` (``flatten(1)``; None).
        zero_point: An asymmetric grid's integer zero points, shaped like ``scale`` (int32;
            the weight is ``s (q - z)``); None for a symmetric grid.
    """

    name: str
    q: torch.Tensor
    scale: torch.Tensor
    ch_axis: int | None
    quant_min: int
    quant_max: int
    group_size: int | None = None
    zero_point: torch.Tensor | None = None

    @property
    def bits(self) -> int:
        """Bit width."""
        return int(np.log2(self.quant_max - self.quant_min + 1))

    def dequantized(self) -> torch.Tensor:
        """``s (q - z)`` in float32, the weight the float model holds."""
        if self.zero_point is None:
            return self.q.float() * self.broadcast_scale()
        return (self.q.float() - self.broadcast(self.zero_point.float())) * self.broadcast_scale()

    def broadcast_scale(self) -> torch.Tensor:
        """The scale shaped to broadcast against ``q`` (one per channel along ``ch_axis``)."""
        return self.broadcast(self.scale)

    def broadcast(self, values: torch.Tensor) -> torch.Tensor:
        """Per-scale values (scales, zero points) shaped to broadcast against ``q``."""
        if self.ch_axis is None:
            return values
        if self.group_size is not None:  # (C_out, K / G) -> (C_out, K) -> q's shape
            return values.repeat_interleave(self.group_size, dim=1).reshape(self.q.shape)
        shape = [1] * self.q.dim()
        shape[self.ch_axis] = -1
        return values.reshape(shape)


def quantized_layers(quantizers: dict[str, AdaroundFakeQuantizer]) -> list[QuantizedLayer]:
    """The integer weights and grids of calibrated quantizers (on the CPU).

    Example:
        >>> fq = AdaroundFakeQuantizer(quant_min=-8, quant_max=7)
        >>> _ = fq(torch.randn(3, 2))
        >>> quantized_layers({"fc": fq})[0].q.dtype
        torch.int8
    """
    layers = []
    for name, fq in quantizers.items():
        per_channel = fq.is_per_channel
        if fq.group_size is not None:  # the expanded (C_out, C_in) scale, one per group
            scale = fq.scale.reshape(fq.scale.shape[0], -1)[:, :: fq.group_size]
        else:
            scale = fq.scale.flatten() if per_channel else fq.scale.reshape(())
        layers.append(
            QuantizedLayer(
                name=name,
                q=fq.integer_weight().cpu().contiguous(),
                scale=scale.float().cpu().contiguous(),
                ch_axis=fq.ch_axis if per_channel else None,
                quant_min=int(fq.quant_min),
                quant_max=int(fq.quant_max),
                group_size=fq.group_size,
                zero_point=None if fq.is_symmetric else fq.zero_points.int().cpu().contiguous(),
            )
        )
    return layers


def save_quantized_weights(
    path: Path,
    layers: list[QuantizedLayer],
    input_quantizers: dict[str, ActivationQuantizer] | None = None,
) -> None:
    """Write the integer weights and scales as safetensors, grids in the metadata.

    ``input_quantizers`` (activation quantization) add ``NAME.input_scale`` and
    ``NAME.input_zero_point`` and their bits in the ``activations`` metadata entry.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    grids: dict[str, Any] = {}
    activations: dict[str, Any] = {}
    for name, quantizer in (input_quantizers or {}).items():
        tensors[f"{name}.input_scale"] = quantizer.scale.detach().float().cpu().reshape(())
        tensors[f"{name}.input_zero_point"] = quantizer.zero_point.detach().cpu().reshape(())
        activations[name] = {
            "bits": quantizer.bits,
            "quant_min": quantizer.quant_min,
            "quant_max": quantizer.quant_max,
        }
    for layer in layers:
        tensors[f"{layer.name}.q"] = layer.q
        tensors[f"{layer.name}.scale"] = layer.scale
        if layer.zero_point is not None:
            tensors[f"{layer.name}.zero_point"] = layer.zero_point
        grids[layer.name] = {
            "ch_axis": layer.ch_axis,
            "bits": layer.bits,
            "quant_min": layer.quant_min,
            "quant_max": layer.quant_max,
        }
        if layer.group_size is not None:
            grids[layer.name]["group_size"] = layer.group_size
    metadata = {"format": "adaround_lightning/1", "layers": json.dumps(grids)}
    if activations:
        metadata["activations"] = json.dumps(activations)
    save_file(tensors, str(path), metadata=metadata)
    _sort_metadata(Path(path))


def _sort_metadata(path: Path) -> None:
    """Rewrite the safetensors header with its metadata keys sorted, in place.

    safetensors keeps the metadata in a Rust ``HashMap``, so its key order in the header changes
    from one process to the next, and two runs with identical integers would write files with
    different bytes. The header is compact JSON padded with spaces to its recorded length; the
    same content in sorted order has the same length, so the tensor data does not move.
    """
    with path.open("r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
        metadata = header.pop("__metadata__", None)
        ordered = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
        ordered.update(header)  # tensor entries keep safetensors' (deterministic) order
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > length:  # never: the same keys and values in another order
            raise RuntimeError(f"{path}: the sorted safetensors header does not fit")
        handle.seek(8)
        handle.write(text.ljust(length))


def load_quantized_weights(path: Path) -> list[QuantizedLayer]:
    """Read what :func:`save_quantized_weights` wrote."""
    from safetensors import safe_open

    layers = []
    with safe_open(str(path), framework="pt") as handle:
        grids = json.loads(handle.metadata()["layers"])
        for name, grid in grids.items():
            layers.append(
                QuantizedLayer(
                    name=name,
                    q=handle.get_tensor(f"{name}.q"),
                    scale=handle.get_tensor(f"{name}.scale"),
                    ch_axis=grid["ch_axis"],
                    quant_min=grid["quant_min"],
                    quant_max=grid["quant_max"],
                    group_size=grid.get("group_size"),
                    zero_point=_optional_tensor(handle, f"{name}.zero_point"),
                )
            )
    return layers


def _optional_tensor(handle: Any, key: str) -> torch.Tensor | None:
    keys = handle.keys()  # safe_open has no __contains__
    return handle.get_tensor(key) if key in keys else None


def load_input_quantizers(path: Path) -> dict[str, ActivationQuantizer]:
    """The calibrated input quantizers stored by :func:`save_quantized_weights` (may be empty)."""
    from safetensors import safe_open

    quantizers: dict[str, ActivationQuantizer] = {}
    with safe_open(str(path), framework="pt") as handle:
        activations = json.loads(handle.metadata().get("activations", "{}"))
        for name, grid in activations.items():
            quantizer = ActivationQuantizer(grid["bits"], symmetric=grid["quant_min"] < 0)
            quantizer.scale.copy_(handle.get_tensor(f"{name}.input_scale"))
            quantizer.zero_point.copy_(handle.get_tensor(f"{name}.input_zero_point"))
            quantizer.calibrated = True
            quantizers[name] = quantizer
    return quantizers


def quantizer_states(quantizers: dict[str, AdaroundFakeQuantizer]) -> dict[str, dict[str, Any]]:
    """What the grid check needs per layer: ``V``, ``floor(W/s)``, scale and range (CPU).

    With a learned scale (``adaround.learn_scale``) also ``floor_scale``, the grid that
    ``floor(W/s)`` was taken on.
    """
    states = {}
    for name, fq in quantizers.items():
        states[name] = {
            "V": fq.V.detach().cpu(),
            "weight_floor": fq.weight_floor.cpu(),
            "scale": fq.scale.cpu(),
            "quant_min": int(fq.quant_min),
            "quant_max": int(fq.quant_max),
        }
        if fq.floor_scale is not None:
            states[name]["floor_scale"] = fq.floor_scale.cpu()
    return states

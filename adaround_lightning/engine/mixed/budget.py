"""What a mixed-precision budget allows: sizes of layers and of the whole model, in bits.

Both budgets bound one linear quantity, the sum over quantized layers of ``elements * bits``
(``n_l * b_l`` below); the size budget first takes off what does not depend on the bits:

    average bits = sum_l n_l b_l / sum_l n_l                       (quantized weight elements)
    size (bytes) = ceil(sum_l n_l b_l / 8) + 4 * (scales + float parameter elements)

with one float32 scale per output channel (per group with ``quant.group_size``, one per tensor
per-tensor) and every other parameter (biases, norms, excluded and unsupported layers) at 32
bits: the model a runtime loads, weights packed at their bits.

Example:
    >>> layers = [LayerSize("conv", 1000, 10), LayerSize("fc", 200, 2, fixed_bits=8)]
    >>> budget = BitBudget(average_bits=3.0)
    >>> budget.bit_elements_allowed(layers, float_elements=50)
    3600
    >>> model_size_bytes({"conv": 2, "fc": 8}, layers, float_elements=50)
    698
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["BitBudget", "LayerSize", "average_bits", "model_size_bytes"]

#: Bytes per float32 value (scales and parameters left in float).
FLOAT_BYTES = 4


@dataclass(frozen=True)
class LayerSize:
    """One quantized layer as a budget sees it.

    Attributes:
        name: Layer name.
        elements: Weight elements ``n_l``.
        scales: Float32 scales stored with them.
        fixed_bits: Bits set by ``quant.layer_bits`` or the first/last-layer rule (they count
            against the budget but are not chosen), None when the budget chooses.
    """

    name: str
    elements: int
    scales: int
    fixed_bits: int | None = None


@dataclass(frozen=True)
class BitBudget:
    """``quant.average_bits`` and/or ``quant.max_size_mb`` (MB = 10^6 bytes); both may be set."""

    average_bits: float | None = None
    max_size_mb: float | None = None

    def bit_elements_allowed(self, layers: Sequence[LayerSize], float_elements: int) -> int:
        """The largest ``sum_l n_l b_l`` within every budget that is set."""
        limits = []
        if self.average_bits is not None:
            total = sum(layer.elements for layer in layers)
            limits.append(math.floor(self.average_bits * total + 1e-9))
        if self.max_size_mb is not None:
            fixed = FLOAT_BYTES * (sum(layer.scales for layer in layers) + float_elements)
            limits.append(8 * math.floor(self.max_size_mb * 1e6 - fixed + 1e-9))
        if not limits:
            raise ValueError("a BitBudget needs average_bits or max_size_mb")
        return min(limits)

    def describe(self) -> str:
        """The budget as the settings that set it, e.g. ``quant.average_bits=3.0``."""
        parts = []
        if self.average_bits is not None:
            parts.append(f"quant.average_bits={self.average_bits:g}")
        if self.max_size_mb is not None:
            parts.append(f"quant.max_size_mb={self.max_size_mb:g}")
        return " and ".join(parts)


def average_bits(bits: Mapping[str, int], layers: Sequence[LayerSize]) -> float:
    """Mean bit width over the quantized weight elements of ``layers``."""
    total = sum(layer.elements for layer in layers)
    return sum(layer.elements * bits[layer.name] for layer in layers) / max(total, 1)


def model_size_bytes(
    bits: Mapping[str, int], layers: Sequence[LayerSize], float_elements: int
) -> int:
    """Bytes of the weights at ``bits``, their scales and the parameters left in float."""
    packed = math.ceil(sum(layer.elements * bits[layer.name] for layer in layers) / 8)
    return packed + FLOAT_BYTES * (sum(layer.scales for layer in layers) + float_elements)

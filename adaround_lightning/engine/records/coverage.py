"""Which weights of a network were quantized: element counts and every weight left in float.

Counted over the weights that enter a convolution, a linear map or an attention projection:
``weight`` of every Conv1d/2d/3d and Linear module, ``in_proj_weight`` (or ``q/k/v``'s
``*_proj_weight``) of an ``nn.MultiheadAttention`` that could not be rewritten with separate
projections, and every other parameter the trace saw passed to ``F.linear``, ``F.conv*`` or a
matmul. Nothing is left in float silently: each such weight that is not quantized is listed with
its reason, and the walk warns below 100 %.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from adaround_lightning.graph.functional_weights import FunctionalUse

__all__ = ["WeightCoverage", "weight_coverage"]

_PROJECTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
_NOT_CALLED = (
    "not called as a module in the traced forward pass (unused, or its weight is used "
    "functionally), left in float"
)
_ATTENTION = (
    "used functionally by an nn.MultiheadAttention that could not run with separate projections "
    "(add_bias_kv or add_zero_attn), left in float"
)


@dataclass(frozen=True)
class WeightCoverage:
    """Quantized weight elements out of all Conv/Linear/attention-projection weight elements.

    Attributes:
        quantized_elements: Elements of the quantized weights.
        total_elements: Elements of every counted weight.
        left_in_float: Per weight left in float (``module.param``), why.
    """

    quantized_elements: int
    total_elements: int
    left_in_float: dict[str, str] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """``quantized_elements / total_elements`` (1.0 for a network without such weights)."""
        return self.quantized_elements / self.total_elements if self.total_elements else 1.0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, with the fraction."""
        return {
            "quantized_elements": self.quantized_elements,
            "total_elements": self.total_elements,
            "fraction": self.fraction,
            "left_in_float": dict(self.left_in_float),
        }


def _counted_weights(module: nn.Module) -> list[str]:
    if isinstance(module, _PROJECTIONS):
        return ["weight"]
    if isinstance(module, nn.MultiheadAttention):
        return [n for n in _ATTENTION_WEIGHTS if getattr(module, n, None) is not None]
    return []


def _functional_reason(use: FunctionalUse) -> str:
    where = f"{use.op} in {use.owner or 'the model'}'s forward"
    if use.layer is None:
        return f"a bare parameter passed to {where}: hold it in an nn.Linear/Conv to quantize it"
    return f"its module's weight is passed to {where} from outside the module, left in float"


def weight_coverage(
    model: nn.Module,
    quantized: Iterable[str],
    skipped: Mapping[str, str],
    functional: Iterable[FunctionalUse] = (),
) -> WeightCoverage:
    """Count the quantized and the float weights of ``model``.

    Args:
        model: The (BN-folded) network.
        quantized: Names of the modules whose weight was quantized.
        skipped: Modules the plan left in float, name -> reason.
        functional: Weights the trace saw used functionally (counted, and named with the reason).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 2))
        >>> coverage = weight_coverage(net, ["0"], {})
        >>> round(coverage.fraction, 3), sorted(coverage.left_in_float)
        (0.2, ['1.in_proj_weight', '1.out_proj.weight'])
    """
    done = set(quantized)
    quantized_elements = total = 0
    left: dict[str, str] = {}
    uses = {use.layer: use for use in functional if use.layer is not None}
    for use in functional:
        if use.layer is None:
            total += model.get_parameter(use.weight).numel()
            left[use.weight] = _functional_reason(use)
    for name, module in model.named_modules():
        for parameter in _counted_weights(module):
            count = getattr(module, parameter).numel()
            total += count
            if parameter == "weight" and name in done:
                quantized_elements += count
                continue
            reason = skipped.get(name) or (
                _ATTENTION
                if parameter != "weight"
                else _functional_reason(uses[name])
                if name in uses
                else _NOT_CALLED
            )
            left[f"{name}.{parameter}"] = reason
    return WeightCoverage(quantized_elements, total, left)

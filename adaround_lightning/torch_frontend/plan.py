"""The plan of a calibration: which layers, in which blocks and order, at how many bits.

Made once from one traced forward pass of the BN-folded float network
(:func:`~adaround_lightning.graph.trace.trace_network`), then read, never changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fnmatch import fnmatchcase
from types import MappingProxyType

import torch
from torch import nn

from adaround_lightning.core.errors import UserError
from adaround_lightning.engine.bit_plan import plan_bits
from adaround_lightning.graph.functional_weights import FunctionalUse, functional_weight_uses
from adaround_lightning.graph.trace import NetworkTrace, trace_network
from adaround_lightning.quant.quant_config import QuantConfig

__all__ = ["CalibrationPlan", "plan_calibration"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationPlan:
    """What the walk will do.

    Attributes:
        trace: Layers and blocks in execution order.
        skipped: Layers left in float, name -> reason (read-only).
        bits: Bit width of every layer that is quantized (read-only).
        functional: Weights still used functionally (not through their module's call), which
            stay in float and are reported.
    """

    trace: NetworkTrace
    skipped: MappingProxyType[str, str]
    bits: MappingProxyType[str, int]
    functional: tuple[FunctionalUse, ...] = ()

    @property
    def total_layers(self) -> int:
        """How many layers are quantized."""
        return len(self.bits)


def _skipped_layers(trace: NetworkTrace, quant: QuantConfig) -> dict[str, str]:
    skipped: dict[str, str] = {}
    for name in trace.unsupported:
        skipped[name] = "unsupported layer type, left in float"
    for name in trace.shared:
        skipped[name] = "called more than once (shared weights), left in float"
    if skipped:
        log.warning("left in float: %s", ", ".join(f"{n} ({r})" for n, r in skipped.items()))
    return skipped


#: Why a language model's output projection stays in float.
LM_HEAD_FLOAT = "language model output projection, left in float (quant.quantize_lm_head=false)"
LM_HEAD_TIED = "language model output projection tied to the input embedding, left in float"


def _output_projection(model: nn.Module, quant: QuantConfig) -> dict[str, str]:
    """A language model's ``lm_head`` (``get_output_embeddings()``): float unless opted in.

    GPTQ and AutoRound leave it in float by default; its weight tied to the input embedding
    (GPT-2's default) always stays float, since the embedding is never quantized.
    """
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if not isinstance(head, nn.Linear):
        return {}
    name = next(n for n, m in model.named_modules() if m is head)
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embedding is not None and getattr(embedding, "weight", None) is head.weight:
        log.info("%s: %s", name, LM_HEAD_TIED)
        return {name: LM_HEAD_TIED}
    if quant.quantize_lm_head:
        return {}
    log.info("%s: %s", name, LM_HEAD_FLOAT)
    return {name: LM_HEAD_FLOAT}


def _check_block_patterns(model: nn.Module, patterns: tuple[str, ...]) -> None:
    modules = [(name, type(m).__name__) for name, m in model.named_modules() if name]
    for pattern in patterns:
        if not any(fnmatchcase(n, pattern) or fnmatchcase(t, pattern) for n, t in modules):
            raise UserError(
                f"adaround.blocks pattern {pattern!r} matches no module name or class name of "
                f"the model (e.g. {modules[0][0]!r}, {modules[0][1]!r}); fix or remove it"
            )


def plan_calibration(
    fp_model: nn.Module,
    example_input: torch.Tensor,
    quant: QuantConfig,
    block_patterns: tuple[str, ...] = (),
) -> CalibrationPlan:
    """Trace ``fp_model`` once and decide the skip list and every layer's bits.

    ``block_patterns`` (``adaround.blocks``) declare more blocks: modules whose name or class
    name matches; a pattern that matches no module is an error (it is a typo, or the model is
    not the one meant).

    Raises:
        UserError: If the model has no layer to quantize.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> plan = plan_calibration(net.eval(), torch.randn(2, 3, 8, 8), QuantConfig(4))
        >>> dict(plan.bits)
        {'0': 4, '3': 4}
    """
    _check_block_patterns(fp_model, block_patterns)
    trace = trace_network(fp_model, example_input, block_patterns=block_patterns)
    if not trace.layers:
        raise UserError("the model has no Conv1d/2d/3d or Linear layer to quantize")
    skipped = _skipped_layers(trace, quant)
    skipped.update(_output_projection(fp_model, quant))
    bits = plan_bits([info.name for info in trace.layers], quant, skipped)
    functional = tuple(functional_weight_uses(fp_model, example_input))
    return CalibrationPlan(trace, MappingProxyType(skipped), MappingProxyType(bits), functional)

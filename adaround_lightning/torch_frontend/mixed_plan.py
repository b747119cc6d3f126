"""A budget's bits in the plan, chosen before the walk.

:func:`~adaround_lightning.engine.mixed.choose.choose_bits` on the float network, or the choice
a checkpoint folder kept for a resumed run.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn

from adaround_lightning.core.distributed import ProcessContext
from adaround_lightning.engine.bit_plan import explicit_bits
from adaround_lightning.engine.mixed.choose import (
    BitAllocation,
    choose_bits,
    resumable_allocation,
)
from adaround_lightning.quant.quant_config import QuantConfig
from adaround_lightning.torch_frontend.plan import CalibrationPlan

__all__ = ["plan_with_budget"]

log = logging.getLogger(__name__)


def plan_with_budget(
    plan: CalibrationPlan,
    fp_model: nn.Module,
    images: torch.Tensor,
    quant: QuantConfig,
    process: ProcessContext,
    checkpoint: Path | None = None,
    checkpoint_tag: str = "",
) -> tuple[CalibrationPlan, BitAllocation | None]:
    """``plan`` with each layer's bits chosen under ``quant``'s budget (unchanged without one).

    Example:
        >>> from adaround_lightning.core.distributed import ProcessContext
        >>> from adaround_lightning.torch_frontend.plan import plan_calibration
        >>> net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
        >>> quant = QuantConfig(average_bits=3.0, candidate_bits=[2, 4])
        >>> images = torch.randn(64, 8)
        >>> plan = plan_calibration(net, images[:2], quant)
        >>> plan, allocation = plan_with_budget(plan, net, images, quant,
        ...                                     ProcessContext(torch.device("cpu"), 0, 1))
        >>> allocation is not None and allocation.average_bits <= 3.0
        True
    """
    if not quant.has_budget:
        return plan, None
    order = [info.name for info in plan.trace.layers]
    names = [name for name in order if name in plan.bits]
    modules = {name: fp_model.get_submodule(name) for name in names}
    quantized = sum(module.weight.numel() for module in modules.values())
    float_elements = sum(p.numel() for p in fp_model.parameters()) - quantized
    fixed = {n: b for n, b in explicit_bits(order, quant).items() if n in modules}
    allocation = resumable_allocation(
        names,
        lambda: choose_bits(fp_model, images, modules, fixed, quant, float_elements),
        checkpoint,
        checkpoint_tag,
        process.is_main,
    )
    bits = MappingProxyType({name: allocation.bits[name] for name in names})
    return dataclasses.replace(plan, bits=bits), allocation

"""Mixed precision: measure each layer's sensitivity, then choose its bits under the budget.

:func:`choose_bits` runs before the walk: :func:`~.sensitivity.layer_sensitivity` on the first
:data:`SENSITIVITY_SAMPLES` calibration samples, then :func:`~.allocation.allocate_bits`. Under
DDP it runs before the processes can talk (Lightning starts them at the first fit), so every
process runs it on the same samples of the whole calibration set and chooses the same bits; the
walk's check that every process holds the same integers would stop a run where they did not.
The walk then fits every layer at its chosen bits; the choice is kept in the checkpoint folder
so a resumed run fits the layers it has left at the same bits.

Example:
    >>> net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    >>> quant = QuantConfig(average_bits=3.0, candidate_bits=[2, 4])
    >>> allocation = choose_bits(net, torch.randn(64, 8), {"0": net[0], "2": net[2]},
    ...                          {}, quant, float_elements=36)
    >>> allocation.average_bits <= 3.0, sorted(allocation.bits.values())
    (True, [2, 4])
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaround_lightning.core.atomic import atomic_write_text
from adaround_lightning.engine.mixed.allocation import allocate_bits, check_feasible
from adaround_lightning.engine.mixed.budget import (
    BitBudget,
    LayerSize,
    average_bits,
    model_size_bytes,
)
from adaround_lightning.engine.mixed.sensitivity import layer_sensitivity
from adaround_lightning.quant.factory import groups_apply
from adaround_lightning.quant.quant_config import QuantConfig

__all__ = [
    "ALLOCATION_FILE",
    "SENSITIVITY_SAMPLES",
    "BitAllocation",
    "allocate_under_budget",
    "choose_bits",
    "footprint",
    "load_allocation",
    "resumable_allocation",
    "weight_footprint",
]

log = logging.getLogger(__name__)

#: Calibration samples (over all processes) the sensitivity pass uses at most.
SENSITIVITY_SAMPLES = 256
#: Where a checkpoint folder keeps the chosen bits.
ALLOCATION_FILE = "bit_allocation.json"


@dataclass
class BitAllocation:
    """The bits a budget chose, and what they cost.

    Attributes:
        budget: The settings that set the budget, e.g. ``quant.average_bits=3``.
        bits: Layer name -> bits, every quantized layer (fixed ones included).
        fixed: Layers whose bits were set by ``quant.layer_bits`` or the first/last rule.
        average_bits: Achieved mean bits over the quantized weight elements.
        size_bytes: Achieved model size (:func:`~.budget.model_size_bytes`).
        uniform_size_bytes: Size with every quantized layer at each candidate, for comparison.
        predicted_error: Sum of the chosen layers' predicted errors.
        errors: Predicted error (mean over samples) per layer and candidate bits.
        samples: Calibration samples of the sensitivity pass.
        seconds: Time of the sensitivity pass and the allocation.
    """

    budget: str
    bits: dict[str, int]
    fixed: list[str]
    average_bits: float
    size_bytes: int
    uniform_size_bytes: dict[int, int]
    predicted_error: float
    errors: dict[str, dict[int, float]]
    samples: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (bits as string keys)."""
        record = asdict(self)
        record["size_mb"] = round(self.size_bytes / 1e6, 6)
        record["uniform_size_bytes"] = {str(b): n for b, n in self.uniform_size_bytes.items()}
        record["errors"] = {
            name: {str(b): e for b, e in per_bits.items()} for name, per_bits in self.errors.items()
        }
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> BitAllocation:
        """Inverse of :meth:`to_dict` (JSON turns the candidate keys into strings)."""
        values = {k: v for k, v in record.items() if k != "size_mb"}
        values["uniform_size_bytes"] = {int(b): n for b, n in record["uniform_size_bytes"].items()}
        values["errors"] = {
            name: {int(b): e for b, e in per_bits.items()}
            for name, per_bits in record["errors"].items()
        }
        return cls(**values)

    def summary(self) -> str:
        """One line: the budget, how many layers at each bit width, average bits and size."""
        counts = Counter(self.bits.values())
        spread = ", ".join(f"{b} bits x {counts[b]}" for b in sorted(counts))
        return (
            f"{self.budget}: {spread} layers; {self.average_bits:.3f} average bits, "
            f"{self.size_bytes / 1e6:.3f} MB (sensitivity and allocation {self.seconds:.1f} s "
            f"on {self.samples} samples)"
        )


def layer_sizes(
    weights: Mapping[str, torch.Tensor], fixed_bits: Mapping[str, int], quant: QuantConfig
) -> list[LayerSize]:
    """Elements and scales of each layer's weight (PyTorch layout), in the order given."""
    sizes = []
    for name, weight in weights.items():
        scales = weight.shape[0] if quant.per_channel else 1
        if quant.per_channel and groups_apply(weight, quant.group_size):
            scales = weight.numel() // quant.group_size  # type: ignore[operator]
        sizes.append(LayerSize(name, weight.numel(), scales, fixed_bits.get(name)))
    return sizes


def weight_footprint(
    model: nn.Module, bits: Mapping[str, int], quant: QuantConfig
) -> dict[str, float]:
    """Average bits and size (:mod:`~.budget`) of ``model`` with layers ``bits`` quantized.

    Example:
        >>> net = nn.Sequential(nn.Linear(8, 4))  # 32 weights at 4 bits, 4 scales, 4 biases
        >>> weight_footprint(net, {"0": 4}, QuantConfig())
        {'average_bits': 4.0, 'size_bytes': 48, 'size_mb': 4.8e-05}
    """
    weights = {name: model.get_submodule(name).weight for name in bits}
    total = sum(p.numel() for p in model.parameters())
    return footprint(weights, bits, quant, total - sum(w.numel() for w in weights.values()))


def footprint(
    weights: Mapping[str, torch.Tensor],
    bits: Mapping[str, int],
    quant: QuantConfig,
    float_elements: int,
) -> dict[str, float]:
    """Average bits and size of layers ``bits`` with ``float_elements`` parameters in float."""
    sizes = layer_sizes(weights, {}, quant)
    size = model_size_bytes(bits, sizes, float_elements)
    return {"average_bits": average_bits(bits, sizes), "size_bytes": size, "size_mb": size / 1e6}


def _mean_errors(
    model: nn.Module, images: torch.Tensor, layers: Mapping[str, nn.Module], quant: QuantConfig
) -> tuple[dict[str, dict[int, float]], int]:
    device = next(model.parameters()).device
    local = images[:SENSITIVITY_SAMPLES].to(device)
    sums = layer_sensitivity(model, local, layers, quant.candidate_bits, quant)
    n = local.shape[0]
    return {name: {b: e / n for b, e in per_bits.items()} for name, per_bits in sums.items()}, n


def choose_bits(
    model: nn.Module,
    images: torch.Tensor,
    layers: Mapping[str, nn.Module],
    fixed_bits: Mapping[str, int],
    quant: QuantConfig,
    float_elements: int,
) -> BitAllocation:
    """Each layer's bits under ``quant``'s budget, from its measured sensitivity.

    Args:
        model: The float (BN-folded) network.
        images: The whole calibration set (every process passes the same): the first
            :data:`SENSITIVITY_SAMPLES` are used.
        layers: Name -> module of every quantized layer, in execution order.
        fixed_bits: Layers whose bits are set (``quant.layer_bits``, first/last rule).
        quant: The budget (``average_bits``, ``max_size_mb``), candidates and grid settings.
        float_elements: Parameter elements left in float (biases, norms, excluded layers).

    Raises:
        UserError: If the budget cannot be met even at the smallest candidate.
    """
    start = time.perf_counter()
    weights = {name: module.weight for name, module in layers.items()}
    return allocate_under_budget(
        weights,
        fixed_bits,
        quant,
        float_elements,
        lambda: _mean_errors(model, images, layers, quant),
        start,
    )


def allocate_under_budget(
    weights: Mapping[str, torch.Tensor],
    fixed_bits: Mapping[str, int],
    quant: QuantConfig,
    float_elements: int,
    measure: Callable[[], tuple[dict[str, dict[int, float]], int]],
    start: float,
) -> BitAllocation:
    """Check the budget, ``measure()`` the errors, allocate: the part both front ends share.

    Args:
        weights: Name -> weight (PyTorch layout) of every quantized layer, in order.
        fixed_bits: Layers whose bits are set.
        quant: The budget, candidates and grid settings.
        float_elements: Parameter elements left in float.
        measure: Returns the mean error per layer and candidate, and the samples used.
        start: ``time.perf_counter()`` when the choice began.
    """
    fixed = dict(fixed_bits)
    budget = BitBudget(quant.average_bits, quant.max_size_mb)
    sizes = layer_sizes(weights, fixed, quant)
    check_feasible(  # before the sensitivity pass: a budget no bits meet is a user error
        sizes,
        quant.candidate_bits,
        budget.bit_elements_allowed(sizes, float_elements),
        budget.describe(),
    )
    errors, samples = measure()
    fixed.update(_unranked(weights, errors, fixed, quant))
    sizes = layer_sizes(weights, fixed, quant)
    bits = allocate_bits(
        sizes, errors, quant.candidate_bits, budget.bit_elements_allowed(sizes, float_elements)
    )
    return BitAllocation(
        budget=budget.describe(),
        bits=bits,
        fixed=sorted(fixed),
        average_bits=average_bits(bits, sizes),
        size_bytes=model_size_bytes(bits, sizes, float_elements),
        uniform_size_bytes={
            b: model_size_bytes(dict.fromkeys(bits, b), sizes, float_elements)
            for b in quant.candidate_bits
        },
        predicted_error=sum(errors[n][b] for n, b in bits.items() if n not in fixed),
        errors=errors,
        samples=samples,
        seconds=time.perf_counter() - start,
    )


def _unranked(
    layers: Mapping[str, object],
    errors: Mapping[str, Any],
    fixed: Mapping[str, int],
    quant: QuantConfig,
) -> dict[str, int]:
    """Layers no gradient reached keep ``quant.weight_bits`` (logged)."""
    unranked = {}
    for name in layers:
        if name not in errors and name not in fixed:
            log.warning(
                "%s: no gradient of the network's output reached this layer's output, so its "
                "sensitivity is unknown: it keeps quant.weight_bits=%d (counted in the budget)",
                name,
                quant.weight_bits,
            )
            unranked[name] = quant.weight_bits
    return unranked


def save_allocation(folder: Path, tag: str, allocation: BitAllocation) -> None:
    """Keep ``allocation`` in the checkpoint ``folder`` for a resumed run of the same settings."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {"tag": tag, **allocation.to_dict()}
    atomic_write_text(folder / ALLOCATION_FILE, json.dumps(record, indent=1))


def resumable_allocation(
    names: list[str],
    choose: Callable[[], BitAllocation],
    checkpoint: Path | None = None,
    tag: str = "",
    is_main: bool = True,
) -> BitAllocation:
    """The bits a checkpoint kept for layers ``names``, else ``choose()`` (kept there); logged.

    Both front ends choose through this, so a resumed run fits its remaining layers at the bits
    it started with.

    Example:
        >>> made = BitAllocation("quant.average_bits=3", {"fc": 3}, [], 3.0, 10, {}, 0.0, {},
        ...                      samples=8, seconds=0.1)
        >>> resumable_allocation(["fc"], lambda: made).bits
        {'fc': 3}
    """
    allocation = load_allocation(checkpoint, tag) if checkpoint is not None else None
    if allocation is not None and set(allocation.bits) == set(names):
        if is_main:
            log.info("bits chosen before, kept for the resumed run: %s", allocation.summary())
    else:
        allocation = choose()
        if is_main:
            if checkpoint is not None:
                save_allocation(checkpoint, tag, allocation)
            log.info("mixed precision under %s", allocation.summary())
    if is_main:
        log.info("bits per layer: %s", ", ".join(f"{n}={allocation.bits[n]}" for n in names))
    return allocation


def load_allocation(folder: Path, tag: str) -> BitAllocation | None:
    """The allocation a run with the same settings chose in ``folder``, None if there is none."""
    path = folder / ALLOCATION_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.pop("tag", None) != tag:
        return None
    return BitAllocation.from_dict(record)

"""Each layer's bits under a budget: the least predicted error, as a multiple-choice knapsack.

Given per layer ``l`` and candidate ``b`` a predicted network-output error ``e_l(b)``
(:mod:`~adaround_lightning.engine.mixed.sensitivity`), errors taken as additive, choose one
``b_l`` per layer to

    minimise  sum_l e_l(b_l)   subject to   sum_l n_l b_l <= W,

``W`` the bit-elements the budget allows once the layers with fixed bits are paid for. A
dynamic programme over the budget cut into ``resolution`` units, each layer's cost rounded *up*
to whole units, so its answer never exceeds ``W``; the units it lost to rounding are then spent
greedily on the upgrades that lower the error most, checked in exact integers.

Example:
    >>> layers = [LayerSize("a", 100, 1), LayerSize("b", 100, 1)]
    >>> errors = {"a": {2: 10.0, 4: 1.0}, "b": {2: 2.0, 4: 1.0}}
    >>> allocate_bits(layers, errors, [2, 4], bit_elements=600)
    {'a': 4, 'b': 2}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from adaround_lightning.core.errors import UserError
from adaround_lightning.engine.mixed.budget import LayerSize

__all__ = ["allocate_bits", "check_feasible"]

#: Units the budget is cut into: at most ``layers / resolution`` of it lost before the refill.
RESOLUTION = 20_000


def allocate_bits(
    layers: Sequence[LayerSize],
    errors: Mapping[str, Mapping[int, float]],
    candidates: Sequence[int],
    bit_elements: int,
    resolution: int = RESOLUTION,
) -> dict[str, int]:
    """Bits per layer with the least total predicted error and ``sum n_l b_l <= bit_elements``.

    Args:
        layers: The quantized layers; those with ``fixed_bits`` keep them.
        errors: Predicted error per free layer and candidate bit width.
        candidates: Bit widths to choose from.
        bit_elements: The budget, ``W``, in bit-elements (fixed layers included).
        resolution: Units of the dynamic programme.

    Raises:
        UserError: If even the smallest candidate everywhere exceeds the budget.
    """
    candidates = sorted(candidates)
    fixed = {layer.name: layer.fixed_bits for layer in layers if layer.fixed_bits is not None}
    free = [layer for layer in layers if layer.fixed_bits is None]
    spare = bit_elements - sum(
        layer.elements * fixed[layer.name] for layer in layers if layer.name in fixed
    )
    check_feasible(layers, candidates, bit_elements)
    if not free:
        return dict(fixed)
    table = np.array([[errors[layer.name][b] for b in candidates] for layer in free])
    chosen = _knapsack(free, table, candidates, spare, resolution)
    chosen = _refill(free, table, candidates, chosen, spare)
    bits = {layer.name: candidates[c] for layer, c in zip(free, chosen, strict=True)}
    return {layer.name: fixed.get(layer.name, bits.get(layer.name, 0)) for layer in layers}


def check_feasible(
    layers: Sequence[LayerSize], candidates: Sequence[int], bit_elements: int, budget: str = ""
) -> None:
    """Raise :class:`UserError` if the fixed layers and the smallest candidate exceed the budget.

    Example:
        >>> check_feasible([LayerSize("a", 10, 1)], [2, 4], bit_elements=15)
        Traceback (most recent call last):
        ...
        adaround_lightning.core.errors.UserError: the budget allows 1.500 bits per weight on average, but 2 bits everywhere (with the fixed layers at theirs) needs 2.000: raise the budget, lower quant.layer_bits or quant.first_layer_bits/last_layer_bits, or add a smaller quant.candidate_bits
    """  # noqa: E501
    least = sum(layer.elements * (layer.fixed_bits or min(candidates)) for layer in layers)
    if least <= bit_elements:
        return
    total = max(sum(layer.elements for layer in layers), 1)
    raise UserError(
        f"{budget or 'the budget'} allows {bit_elements / total:.3f} bits per weight on "
        f"average, but {min(candidates)} bits everywhere (with the fixed layers at theirs) "
        f"needs {least / total:.3f}: raise the budget, lower quant.layer_bits or "
        "quant.first_layer_bits/last_layer_bits, or add a smaller quant.candidate_bits"
    )


def _knapsack(
    free: Sequence[LayerSize],
    table: np.ndarray,
    candidates: Sequence[int],
    spare: int,
    resolution: int,
) -> list[int]:
    # best[k]: least error of the layers so far within k units; choice[l, k]: candidate taken.
    unit = spare / resolution
    best = np.zeros(resolution + 1)
    choice = np.zeros((len(free), resolution + 1), dtype=np.int16)
    costs = np.zeros((len(free), len(candidates)), dtype=np.int64)
    for index, layer in enumerate(free):
        options = np.full((len(candidates), resolution + 1), np.inf)
        for c, bits in enumerate(candidates):
            cost = math.ceil(layer.elements * bits / unit - 1e-9) if unit > 0 else 0
            costs[index, c] = cost
            if cost <= resolution:
                options[c, cost:] = best[: resolution + 1 - cost] + table[index, c]
        choice[index] = options.argmin(axis=0)  # ties: the fewer bits
        best = options.min(axis=0)
    chosen, k = [0] * len(free), resolution
    for index in reversed(range(len(free))):
        chosen[index] = int(choice[index, k])
        k -= int(costs[index, chosen[index]])
    return chosen


def _refill(
    free: Sequence[LayerSize],
    table: np.ndarray,
    candidates: Sequence[int],
    chosen: list[int],
    spare: int,
) -> list[int]:
    # Exact integers: what rounding costs up left unspent buys the upgrade that helps most.
    chosen = list(chosen)
    used = sum(layer.elements * candidates[c] for layer, c in zip(free, chosen, strict=True))
    while True:
        best_gain, best_move = 0.0, None
        for index, layer in enumerate(free):
            for c in range(chosen[index] + 1, len(candidates)):
                extra = layer.elements * (candidates[c] - candidates[chosen[index]])
                gain = table[index, chosen[index]] - table[index, c]
                if used + extra <= spare and gain > best_gain:
                    best_gain, best_move = gain, (index, c, extra)
        if best_move is None:
            return chosen
        index, c, extra = best_move
        chosen[index], used = c, used + extra

"""The allocation never exceeds its budget and is as good as brute force on small problems."""

from __future__ import annotations

import itertools
import random

import pytest

from adaround_lightning.core.errors import UserError
from adaround_lightning.engine.mixed.allocation import allocate_bits
from adaround_lightning.engine.mixed.budget import (
    BitBudget,
    LayerSize,
    average_bits,
    model_size_bytes,
)

CANDIDATES = [2, 3, 4, 8]


def _network(rng: random.Random, layers: int) -> tuple[list[LayerSize], dict]:
    sizes, errors = [], {}
    for index in range(layers):
        name = f"layer{index}"
        channels = rng.choice([4, 16, 64])
        elements = channels * rng.choice([3, 27, 72, 576])
        fixed = rng.choice([None, None, None, None, 8, 4]) if layers > 2 else None
        sizes.append(LayerSize(name, elements, channels, fixed))
        # An error that falls with the bits, as quantization noise does (4x per bit), scaled
        # by a random sensitivity.
        scale = rng.lognormvariate(0, 2)
        errors[name] = {b: scale * 4.0 ** (-b) * rng.uniform(0.5, 1.5) for b in CANDIDATES}
    return sizes, errors


def _cost(bits: dict, sizes: list[LayerSize]) -> int:
    return sum(layer.elements * bits[layer.name] for layer in sizes)


@pytest.mark.parametrize("trial", range(40))
def test_random_budgets_are_never_exceeded(trial: int) -> None:
    rng = random.Random(trial)
    sizes, errors = _network(rng, rng.randint(1, 30))
    float_elements = rng.randint(0, 5000)
    least = sum(s.elements * (s.fixed_bits or 2) for s in sizes)
    most = sum(s.elements * (s.fixed_bits or 8) for s in sizes)
    total = sum(s.elements for s in sizes)
    target = rng.uniform(least, most) / total
    if rng.random() < 0.5:
        budget = BitBudget(average_bits=target)
    else:  # the same target as a size, or both
        size = (target * total / 8 + 4 * (sum(s.scales for s in sizes) + float_elements)) / 1e6
        budget = BitBudget(max_size_mb=size, average_bits=target + 1 if trial % 4 else None)
    allowed = budget.bit_elements_allowed(sizes, float_elements)
    bits = allocate_bits(sizes, errors, CANDIDATES, allowed)
    assert set(bits) == {s.name for s in sizes}
    assert _cost(bits, sizes) <= allowed
    for layer in sizes:
        assert bits[layer.name] == (layer.fixed_bits or bits[layer.name])
        assert bits[layer.name] in CANDIDATES or bits[layer.name] == layer.fixed_bits
    if budget.average_bits is not None:
        assert average_bits(bits, sizes) <= budget.average_bits + 1e-12
    if budget.max_size_mb is not None:
        assert model_size_bytes(bits, sizes, float_elements) <= budget.max_size_mb * 1e6


@pytest.mark.parametrize("trial", range(12))
def test_no_worse_than_brute_force_within_the_rounding(trial: int) -> None:
    # The programme rounds each cost up to a unit of W / R: it must beat every allocation
    # that fits in W less one unit per layer (an independent exhaustive search).
    rng = random.Random(100 + trial)
    sizes, errors = _network(rng, rng.randint(2, 5))
    sizes = [LayerSize(s.name, s.elements, s.scales) for s in sizes]
    total = sum(s.elements for s in sizes)
    allowed = int(rng.uniform(2.2, 7.5) * total)
    resolution = 2000
    bits = allocate_bits(sizes, errors, CANDIDATES, allowed, resolution=resolution)
    slack = len(sizes) * allowed / resolution
    best = min(
        sum(errors[s.name][b] for s, b in zip(sizes, choice, strict=True))
        for choice in itertools.product(CANDIDATES, repeat=len(sizes))
        if sum(s.elements * b for s, b in zip(sizes, choice, strict=True)) <= allowed - slack
    )
    assert _cost(bits, sizes) <= allowed
    assert sum(errors[n][b] for n, b in bits.items()) <= best * (1 + 1e-9)


def test_budget_below_the_smallest_candidate_names_the_fix() -> None:
    sizes = [LayerSize("a", 100, 4), LayerSize("b", 100, 4, fixed_bits=8)]
    errors = {"a": {b: 1.0 / b for b in CANDIDATES}}
    allowed = BitBudget(average_bits=4.0).bit_elements_allowed(sizes, 0)
    with pytest.raises(UserError, match=r"allows 4\.000 .* needs 5\.000: raise the budget"):
        allocate_bits(sizes, errors, CANDIDATES, allowed)


def test_size_formula_matches_an_independent_count() -> None:
    sizes = [LayerSize("conv", 3 * 3 * 3 * 16, 16), LayerSize("fc", 16 * 10, 10, fixed_bits=8)]
    bits = {"conv": 3, "fc": 8}
    # 432 weights at 3 bits = 1296 bits, 160 at 8 = 1280: 2576 bits = 322 bytes;
    # 26 scales and 26 biases at 4 bytes.
    assert model_size_bytes(bits, sizes, float_elements=26) == 322 + 4 * 52
    assert average_bits(bits, sizes) == pytest.approx(2576 / 592)

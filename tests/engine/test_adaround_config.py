"""AdaroundConfig: the steps of a block fit and the learning rate of a fit."""

from __future__ import annotations

import random

import pytest

from adaround_lightning.engine.adaround_config import AdaroundConfig, BlockBudget


def test_block_steps_follow_the_budget_unless_block_iters_is_set() -> None:
    rng = random.Random(0)
    for _ in range(20):
        iters, layers = rng.randint(1, 5000), rng.randint(1, 12)
        assert AdaroundConfig(iters=iters).block_steps(layers) == iters
        per_layer = AdaroundConfig(iters=iters, block_budget="layer")
        assert per_layer.block_budget is BlockBudget.LAYER
        assert per_layer.block_steps(layers) == iters * layers
        fixed = AdaroundConfig(iters=iters, block_iters=77, block_budget="layer")
        assert fixed.block_steps(layers) == 77


def test_the_default_learning_rate_keeps_the_papers_reach() -> None:
    # lr * steps = 1e-3 * 10k (the paper), bounded to [1e-3, 5e-2]; an explicit lr wins.
    for steps in (1, 10, 199, 200, 201, 500, 2000, 9999, 10000, 50000):
        lr = AdaroundConfig().lr_for(steps)
        assert 1e-3 <= lr <= 5e-2
        assert lr == pytest.approx(min(5e-2, max(1e-3, 10.0 / steps)))
        assert AdaroundConfig(lr=0.003).lr_for(steps) == 0.003


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("block_budget", "blocks", "adaround.block_budget"),
        ("stop_when_binary", "yes", "adaround.stop_when_binary must be true or false"),
        ("lr", 0.0, "adaround.lr must be > 0 or null"),
    ],
)
def test_bad_values_name_the_setting(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdaroundConfig(**{field: value})

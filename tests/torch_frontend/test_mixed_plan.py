"""A budget's bits in the plan, and the same bits for a resumed run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from adaround_lightning.core.distributed import ProcessContext
from adaround_lightning.quant.quant_config import QuantConfig
from adaround_lightning.torch_frontend import mixed_plan
from adaround_lightning.torch_frontend.mixed_plan import plan_with_budget
from adaround_lightning.torch_frontend.plan import plan_calibration

PROCESS = ProcessContext(torch.device("cpu"), 0, 1)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    ).eval()  # fmt: skip


def test_plan_takes_the_budget_bits_and_keeps_fixed_ones() -> None:
    net, images = _net(), torch.randn(48, 3, 8, 8)
    quant = QuantConfig(average_bits=3.0, first_layer_bits=8)
    plan, allocation = plan_with_budget(
        plan_calibration(net, images[:2], quant), net, images, quant, PROCESS
    )
    assert dict(plan.bits) == allocation.bits and plan.bits["0"] == 8
    assert allocation.average_bits <= 3.0 and allocation.fixed == ["0"]


def test_a_resumed_run_keeps_the_bits_chosen_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net, images = _net(), torch.randn(48, 3, 8, 8)
    quant = QuantConfig(average_bits=2.5)
    plan = plan_calibration(net, images[:2], quant)
    _, first = plan_with_budget(plan, net, images, quant, PROCESS, tmp_path, "tag")

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the sensitivity pass ran again")

    monkeypatch.setattr(mixed_plan, "choose_bits", fail)
    resumed, second = plan_with_budget(plan, net, images, quant, PROCESS, tmp_path, "tag")
    assert second.bits == first.bits and dict(resumed.bits) == first.bits
    with pytest.raises(AssertionError, match="ran again"):  # other settings: chosen afresh
        plan_with_budget(plan, net, images, quant, PROCESS, tmp_path, "other")

"""The plan: skip list with reasons, bits per layer, and this process's shard of the inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adaround_lightning.calibration.inputs import shard_for_process
from adaround_lightning.calibration.plan import plan_calibration
from adaround_lightning.core.distributed import ProcessContext
from adaround_lightning.core.errors import UserError
from adaround_lightning.quant.config import QuantConfig

CPU = torch.device("cpu")


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.shared = nn.Conv2d(4, 4, 1)
        self.up = nn.ConvTranspose2d(4, 4, 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shared(self.shared(self.stem(x)))  # called twice: weight sharing
        return self.head(self.up(x))


def test_skip_list_names_every_reason_and_bits_follow_the_rules() -> None:
    quant = QuantConfig(
        weight_bits=3,
        exclude=["head.1"],
        layer_bits={"head.3": 6},
        first_layer_bits=8,
        last_layer_bits=4,  # head.3 is last, but its explicit pattern wins
    )
    plan = plan_calibration(_Net().eval(), torch.randn(2, 3, 4, 4), quant)
    assert dict(plan.skipped) == {
        "up": "unsupported layer type, left in float",
        "shared": "called more than once (shared weights), left in float",
        "head.1": "excluded by quant.exclude",
    }
    assert dict(plan.bits) == {"stem": 8, "head.3": 6}
    assert plan.total_layers == 2
    with pytest.raises(TypeError):
        plan.bits["stem"] = 2  # type: ignore[index]


def test_a_model_without_layers_is_refused() -> None:
    with pytest.raises(UserError, match="no Conv1d/2d/3d or Linear"):
        plan_calibration(nn.Sequential(nn.ReLU()), torch.randn(2, 3), QuantConfig())


def test_each_process_keeps_every_nth_image_and_its_part_of_the_batch() -> None:
    images = torch.arange(12.0).reshape(12, 1)
    shards = [shard_for_process(images, 6, ProcessContext(CPU, rank, 3)) for rank in range(3)]
    got = torch.cat([s.images for s in shards]).flatten().sort().values
    assert torch.equal(got, images.flatten())  # a partition of the calibration set
    assert [s.images.flatten().tolist()[:2] for s in shards] == [[0, 3], [1, 4], [2, 5]]
    with pytest.raises(UserError, match="must divide by the 3 processes"):
        shard_for_process(images, 4, ProcessContext(CPU, 0, 3))
    with pytest.raises(UserError, match="fewer than one batch"):
        shard_for_process(images, 16, ProcessContext(CPU, 0, 1))
    with pytest.raises(UserError, match="floating point"):
        shard_for_process(torch.zeros(8, 1, dtype=torch.int64), 4, ProcessContext(CPU, 0, 1))
    assert shard_for_process(images, 6, ProcessContext(CPU, 1, 2)).batch_size == 3

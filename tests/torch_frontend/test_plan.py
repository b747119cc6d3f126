"""The plan: skip list with reasons, bits per layer, and this process's shard of the inputs."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from adaround_lightning.core.distributed import ProcessContext
from adaround_lightning.core.errors import UserError
from adaround_lightning.engine.cache.inputs import shard_for_process
from adaround_lightning.quant.quant_config import QuantConfig
from adaround_lightning.torch_frontend.plan import plan_calibration

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
    with pytest.raises(UserError, match="must be numbers"):
        shard_for_process(torch.zeros(8, 1, dtype=torch.bool), 4, ProcessContext(CPU, 0, 1))
    token_ids = torch.zeros(8, 5, dtype=torch.int64)  # a language model's input
    assert shard_for_process(token_ids, 4, ProcessContext(CPU, 0, 1)).images.dtype == torch.int64
    assert shard_for_process(images, 6, ProcessContext(CPU, 1, 2)).batch_size == 3


class _MyBlock(nn.Module):
    """A user's own residual block: not one of torchvision's, so not a block by default."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class _MyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential(_MyBlock(), _MyBlock())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize("pattern", ["_MyBlock", "body.*"])
def test_declared_blocks_are_fitted_jointly_and_reported(pattern: str) -> None:
    from adaround_lightning import AdaroundConfig, adaround

    torch.manual_seed(0)
    model, images = _MyNet().eval(), torch.randn(16, 3, 8, 8)
    default = plan_calibration(model, images[:2], QuantConfig(4))
    # Found from the structure without a pattern: elements of body with two layers each.
    assert default.trace.discovered == ["body.0", "body.1"]
    assert [len(b.layers) for b in default.trace.blocks] == [1, 2, 2, 1]
    plan = plan_calibration(model, images[:2], QuantConfig(4), (pattern,))
    joint = {block.name: [i.name for i in block.layers] for block in plan.trace.blocks}
    assert joint["body.0"] == ["body.0.conv1", "body.0.conv2"] and len(joint) == 4
    result = adaround(
        model,
        images,
        QuantConfig(4),
        AdaroundConfig(iters=2, batch_size=8, blocks=[pattern]),
        {"accelerator": "cpu", "devices": 1},
        progress=False,
    )
    blocks = {report.name: report.block for report in result.layers}
    assert blocks["body.1.conv1"] == blocks["body.1.conv2"] == "body.1"
    assert blocks["stem"] is None and blocks["head"] is None  # fitted alone


def test_a_block_pattern_that_matches_nothing_names_the_fix() -> None:
    with pytest.raises(UserError, match=r"adaround.blocks pattern 'Encoder\*' matches no module"):
        plan_calibration(_MyNet().eval(), torch.randn(2, 3, 8, 8), QuantConfig(4), ("Encoder*",))


def test_block_reconstruction_without_a_known_block_warns_and_names_the_fix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from adaround_lightning import AdaroundConfig, adaround

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    with caplog.at_level(logging.INFO):
        adaround(
            net,
            torch.randn(16, 4),
            QuantConfig(4),
            AdaroundConfig(iters=1, batch_size=8),
            {"accelerator": "cpu"},
            progress=False,
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no block of this model is known" in m and "adaround.blocks" in m for m in warnings)
    caplog.clear()
    net = nn.Sequential(net, nn.Linear(2, 3)).eval()
    with caplog.at_level(logging.INFO):
        adaround(
            net,
            torch.randn(16, 4),
            QuantConfig(4),
            AdaroundConfig(iters=1, batch_size=8, blocks=["0"]),
            {"accelerator": "cpu"},
            progress=False,
        )
    assert "block reconstruction: 2 layers in 1 blocks; 1 fitted on their own: 1" in caplog.text

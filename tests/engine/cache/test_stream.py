"""Streaming: the same integers as passes from the images, with far fewer full passes."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torch import nn

from adaround_lightning import AdaroundConfig, EngineConfig, QuantConfig, adaround
from adaround_lightning.engine.cache.stream import plan_stream

CPU = {"accelerator": "cpu", "devices": 1}


class _SkipAcross(nn.Module):
    """conv3 reads conv1's and conv2's outputs: its input is not conv2's output alone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv1(x))
        b = self.conv2(a)
        return self.fc(self.conv3(a + b).mean((2, 3)))


def _run(model: nn.Module, images: torch.Tensor, stream: bool, iters: int = 5, **settings: object):
    config = AdaroundConfig(iters=iters, batch_size=16, **settings)
    engine = EngineConfig(steps_per_batch=1, stream=stream)
    return adaround(
        model, images, QuantConfig(weight_bits=3), config, CPU, progress=False, engine=engine
    )


def _same_integers(a, b) -> None:
    assert a.quantizers.keys() == b.quantizers.keys()
    for name, quantizer in a.quantizers.items():
        assert torch.equal(quantizer.integer_weight(), b.quantizers[name].integer_weight()), name
        assert torch.equal(a.model.get_submodule(name).bias, b.model.get_submodule(name).bias)


def test_the_chain_check_finds_the_skip_connection() -> None:
    torch.manual_seed(0)
    plan = plan_stream(
        _SkipAcross().eval(), ["conv1", "conv2", "conv3", "fc"], torch.randn(2, 3, 6, 6)
    )
    assert plan.chained == {"conv2": True, "conv3": False, "fc": True}
    # A ReLU, a sum and a mean stand between the blocks: no block input is a block output.
    assert plan.direct == {"conv2": False, "conv3": False, "fc": False}


class _InPlaceGlue(nn.Module):
    """b's input is a's output object, but changed in place on the way; c's is b's, unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h.relu_()
        return self.c(self.b(h))


def test_a_block_output_is_reused_only_when_nothing_changed_it() -> None:
    torch.manual_seed(0)
    plan = plan_stream(_InPlaceGlue().eval(), ["a", "b", "c"], torch.randn(2, 3))
    assert plan.chained == {"b": True, "c": True}
    assert plan.direct == {"b": False, "c": True}


@pytest.mark.parametrize("granularity", ["layer", "block"])
def test_streaming_restarts_where_it_must_and_matches_the_prefix_passes(
    granularity: str, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    model, images = _SkipAcross().eval(), torch.randn(48, 3, 6, 6)
    with caplog.at_level(logging.INFO):
        streamed = _run(model, images, True, granularity=granularity)
    prefix = _run(model, images, False, granularity=granularity)
    _same_integers(streamed, prefix)
    assert "restart from the calibration images: conv3" in caplog.text
    assert streamed.cache.restarts == 1 and streamed.cache.full_network_passes == 2
    assert prefix.cache.full_network_passes == 6  # conv2, conv3, fc: one pass per network


def test_a_torchvision_network_streams_block_to_block() -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=5).eval()
    images = torch.randn(32, 3, 64, 64)
    streamed = _run(model, images, True, granularity="block", bias_correction=True)
    prefix = _run(model, images, False, granularity="block", bias_correction=True)
    _same_integers(streamed, prefix)
    # The stem's input is the images themselves: no full pass at all while streaming.
    assert streamed.cache.full_network_passes == 0 and streamed.cache.restarts == 0
    assert prefix.cache.full_network_passes > 20
    # Block-wise targets B(x) became the next blocks' float inputs: fewer block passes.
    assert streamed.cache.reused_block_outputs > 0


@pytest.mark.slow
def test_the_quickstart_streams_to_the_same_integers() -> None:
    from adaround_lightning.data.sources import DataConfig, calibration_images
    from adaround_lightning.data.transforms import PreprocessConfig
    from adaround_lightning.models.model_builder import build_model, quickstart_model_config

    preprocess = PreprocessConfig(
        resize=None, crop=None, pad=2, mean=[0.286], std=[0.353], grayscale_to_rgb=True
    )
    images = calibration_images(DataConfig(source="embedded", preprocess=preprocess))[:256]
    model = build_model(quickstart_model_config())
    streamed = _run(model, images, True, iters=50)
    prefix = _run(model, images, False, iters=50)
    _same_integers(streamed, prefix)
    assert streamed.cache.full_network_passes == 0 < prefix.cache.full_network_passes

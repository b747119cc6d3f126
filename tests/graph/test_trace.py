"""Tracing: layer order, following activations, blocks."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torch import nn

from adaround_lightning.graph.trace import trace_network


def test_tiny_cnn_layers_and_activations(tiny_cnn: nn.Module, images: torch.Tensor) -> None:
    trace = trace_network(tiny_cnn, images[:2])
    assert [layer.name for layer in trace.layers] == ["stem.0", "depthwise", "grouped", "fc"]
    by_name = {layer.name: layer for layer in trace.layers}
    assert by_name["stem.0"].norm == "stem.1" and by_name["stem.0"].activation == "stem.2"
    assert by_name["depthwise"].activation == "act"
    assert by_name["grouped"].activation is None  # its output goes to an addition
    assert [block.name for block in trace.blocks] == ["stem.0", "depthwise", "grouped", "fc"]


def test_resnet_inplace_add_is_not_an_activation_of_conv2() -> None:
    model = torchvision.models.resnet18(num_classes=3).eval()
    trace = trace_network(model, torch.randn(1, 3, 32, 32))
    by_name = {layer.name: layer for layer in trace.layers}
    assert by_name["layer1.0.conv1"].activation == "layer1.0.relu"
    # ``out += identity`` modifies bn2's output in place before the ReLU.
    assert by_name["layer1.0.conv2"].activation is None
    assert by_name["layer2.0.downsample.0"].norm == "layer2.0.downsample.1"
    assert [b.name for b in trace.blocks][:3] == ["conv1", "layer1.0", "layer1.1"]
    assert trace.blocks[-1].name == "fc"
    assert sum(len(b.layers) for b in trace.blocks) == len(trace.layers) == 21


def test_mobilenet_blocks() -> None:
    model = torchvision.models.mobilenet_v2(num_classes=3, width_mult=0.25).eval()
    trace = trace_network(model, torch.randn(1, 3, 32, 32))
    names = [b.name for b in trace.blocks]
    assert names[0] == "features.0.0" and names[1] == "features.1" and names[-1] == "classifier.1"
    assert len(trace.layers) == 53
    relu6 = [layer for layer in trace.layers if layer.activation]
    assert len(relu6) == 35  # stem, 1 + 16 x 2 in the blocks, the last 1x1 conv


def test_unsupported_and_shared_layers() -> None:
    shared = nn.Linear(4, 4)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = nn.ConvTranspose2d(1, 1, 2)
            self.shared = shared
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.up(x).flatten(1)[:, :4]
            return self.head(self.shared(self.shared(x)))

    trace = trace_network(Net().eval(), torch.randn(2, 1, 1, 1))
    assert trace.unsupported == ["up"]
    assert trace.shared == ["shared"]
    assert [layer.name for layer in trace.layers] == ["head"]


class _Masked(nn.Module):
    """A block that needs its mask: fitting it on the input alone would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.inner(x)
        return out if mask is None else out * mask


class _CallsWithMask(nn.Module):
    def __init__(self, mask: torch.Tensor | None) -> None:
        super().__init__()
        self.plain, self.masked, self.mask = _Masked(), _Masked(), mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.masked(self.plain(x, mask=None), mask=self.mask)


def test_a_block_called_with_more_than_its_input_is_not_fitted_as_a_block(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = _CallsWithMask(torch.ones(4)).eval()
    with caplog.at_level(logging.WARNING):
        trace = trace_network(model, torch.randn(2, 4), block_patterns=("_Masked",))
    assert [b.name for b in trace.blocks] == ["plain", "masked.inner.0", "masked.inner.2"]
    assert "mask" in trace.not_blocks["masked"] and "masked" in caplog.text
    # Left at its default (None), the mask does not matter: both are blocks.
    trace = trace_network(
        _CallsWithMask(None).eval(), torch.randn(2, 4), block_patterns=("_Masked",)
    )
    assert [b.name for b in trace.blocks] == ["plain", "masked"] and trace.not_blocks == {}


def test_torch_transformer_encoder_layers_are_blocks() -> None:
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    from adaround_lightning.graph.attention import separate_attention_projections

    example = torch.randn(2, 5, 8)
    separate_attention_projections(encoder)
    trace = trace_network(encoder, example)
    assert [(b.name, len(b.layers)) for b in trace.blocks] == [("layers.0", 6), ("layers.1", 6)]


class _Unit(nn.Module):
    """A residual unit with an attribute sub-module of two layers (like squeeze-excitation)."""

    def __init__(self, returns_tuple: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.gate = nn.Sequential(nn.Conv2d(4, 2, 1), nn.ReLU(), nn.Conv2d(2, 4, 1))
        self.returns_tuple = returns_tuple

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        y = x + self.conv(x) * torch.sigmoid(self.gate(x))
        return (y, x) if self.returns_tuple else y


class _Stages(nn.Module):
    def __init__(self, returns_tuple: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        # Stages of units: the units are the blocks, not the stages.
        self.stages = nn.Sequential(nn.Sequential(_Unit(), _Unit()), nn.Sequential(_Unit()))
        self.odd_list = nn.ModuleList([_Unit(returns_tuple)])
        self.shared = nn.ModuleList([_Unit()])
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        out = self.odd_list[0](x)
        x = out[0] if isinstance(out, tuple) else out
        x = self.shared[0](self.shared[0](x))  # called twice: not a block
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("returns_tuple", [False, True])
def test_blocks_are_discovered_innermost_and_only_where_they_qualify(returns_tuple: bool) -> None:
    torch.manual_seed(0)
    model = _Stages(returns_tuple).eval()
    trace = trace_network(model, torch.randn(2, 3, 8, 8))
    expected = ["odd_list.0"] if not returns_tuple else []
    assert trace.discovered == sorted(["stages.0.0", "stages.0.1", "stages.1.0", *expected])
    joint = {b.name: len(b.layers) for b in trace.blocks if len(b.layers) > 1}
    assert joint == {name: 3 for name in trace.discovered}
    assert not trace.not_blocks  # rejected candidates are not warned about


def test_a_known_block_type_wins_over_discovery() -> None:
    model = torchvision.models.resnet18(num_classes=2).eval()
    trace = trace_network(model, torch.randn(2, 3, 32, 32))
    assert trace.discovered == []
    assert {b.name for b in trace.blocks if len(b.layers) > 1} == {
        f"layer{i}.{j}" for i in range(1, 5) for j in range(2)
    }


class _SizedLayer(nn.Module):
    """Like Hugging Face's Swin layers: takes the feature map's size, returns a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, size: tuple[int, int], mask: None = None) -> tuple:
        assert x.shape[1] == size[0] * size[1]
        return (x + self.fc2(torch.relu(self.fc1(x))), None)


class _SizedStage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_SizedLayer(), _SizedLayer()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, (2, 3), None)[0]
        return x


def test_blocks_called_with_constants_are_replayed_alone_and_left_alone_in_the_network() -> None:
    from adaround_lightning.graph.trace import replay_block_arguments

    torch.manual_seed(0)
    model, x = _SizedStage().eval(), torch.randn(2, 6, 4)
    trace = trace_network(model, x)
    assert trace.replayed == {"layers.0": (((2, 3), None), {}), "layers.1": (((2, 3), None), {})}
    assert [len(b.layers) for b in trace.blocks] == [2, 2]
    before = model(x)
    replay_block_arguments(model, trace.replayed)
    torch.testing.assert_close(model(x), before)  # the network's own calls are unchanged
    alone = model.layers[0](x)  # the walk's call: the constants come back, one tensor out
    torch.testing.assert_close(alone, model.layers[0](x, (2, 3))[0])

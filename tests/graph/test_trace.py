"""Tracing: layer order, following activations, blocks."""

from __future__ import annotations

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

"""BatchNorm folding preserves outputs (checked in float64)."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from adaround_lightning.graph.bn_fold import fold_batch_norms
from tests.conftest import randomize_batchnorm


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_folding_preserves_outputs(name: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=5)
    randomize_batchnorm(model, torch.Generator().manual_seed(0))
    model = model.double().eval()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    reference = model(x)
    folded = copy.deepcopy(model)
    pairs = fold_batch_norms(folded, x[:2])
    assert len(pairs) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(folded(x), reference, atol=1e-9, rtol=1e-9)


def test_linear_batchnorm1d_and_missing_bias(tiny_cnn: nn.Module, images: torch.Tensor) -> None:
    net = nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5), nn.ReLU()).eval()
    randomize_batchnorm(net, torch.Generator().manual_seed(3))
    x = torch.randn(7, 6)
    reference = net(x)
    assert fold_batch_norms(net, x[:2]) == [("0", "1")]
    assert net[0].bias is not None
    assert torch.allclose(net(x), reference, atol=1e-5)
    reference = tiny_cnn(images)
    fold_batch_norms(tiny_cnn, images[:2])
    assert torch.allclose(tiny_cnn(images), reference, atol=1e-5)


def test_training_mode_is_rejected() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)).train()
    with pytest.raises(ValueError, match="eval"):
        fold_batch_norms(net, torch.randn(2, 1, 2, 2))


class _NormPlusSkip(nn.Module):
    """``bn(y) + y``: the BatchNorm is not the conv output's only consumer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn2(self.conv2(torch.relu(self.bn(y) + y)))


def test_a_batchnorm_with_another_consumer_is_not_folded(caplog: pytest.LogCaptureFixture) -> None:
    import copy
    import logging

    from tests.conftest import randomize_batchnorm

    torch.manual_seed(0)
    model = _NormPlusSkip().eval()
    randomize_batchnorm(model, torch.Generator().manual_seed(1))
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    model = model.double()
    reference = model(x)
    folded_model = copy.deepcopy(model)
    with caplog.at_level(logging.WARNING):
        folded = fold_batch_norms(folded_model, x[:2])
    assert folded == [("conv2", "bn2")]  # the sole-consumer pair only
    assert "BatchNorm bn not folded into conv" in caplog.text
    assert isinstance(folded_model.bn, nn.BatchNorm2d)
    assert torch.allclose(folded_model(x), reference, rtol=0, atol=1e-10)

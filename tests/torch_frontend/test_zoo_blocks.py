"""torchvision's CNN and hybrid blocks at a tiny width: fitted as blocks, exported with parity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import convnext, densenet, maxvit

from adaround_lightning import AdaroundConfig, QuantConfig, adaround
from tests.helpers.export import assert_exported_with_parity

CPU = {"accelerator": "cpu", "devices": 1}


def _tiny(name: str) -> tuple[nn.Module, int, type[nn.Module]]:
    """The model, its input size and the block class whose instances must be fitted jointly."""
    if name == "densenet":  # dense layers take the list of all earlier feature maps
        model = densenet.DenseNet(4, (2, 2), num_init_features=8, bn_size=2, num_classes=3)
        return model, 16, densenet._DenseLayer
    if name == "convnext":  # CNBlock permutes its Linear's (N, H, W, C) back to (N, C, H, W)
        settings = [convnext.CNBlockConfig(8, 16, 1), convnext.CNBlockConfig(16, None, 1)]
        return convnext.ConvNeXt(settings, num_classes=3), 16, convnext.CNBlock
    model = maxvit.MaxVit(
        input_size=(16, 16),
        stem_channels=8,
        partition_size=2,
        block_channels=[16],
        block_layers=[1],
        head_dim=8,
        stochastic_depth_prob=0.0,
        num_classes=3,
    )
    return model, 16, maxvit.PartitionAttentionLayer


@pytest.mark.parametrize("name", ["densenet", "convnext", "maxvit"])
def test_blocks_are_fitted_jointly_and_the_export_matches(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, size, block_type = _tiny(name)
    model.eval()
    images = torch.randn(32, 3, size, size)
    result = adaround(
        model,
        images,
        QuantConfig(weight_bits=4),
        AdaroundConfig(iters=4, batch_size=16),
        CPU,
        progress=False,
    )
    assert result.coverage is not None and result.coverage.left_in_float == {}
    blocks = {n for n, m in result.float_model.named_modules() if isinstance(m, block_type)}
    fitted_in = {report.block for report in result.layers}
    assert blocks and blocks <= fitted_in
    assert_exported_with_parity(result, images, tmp_path)

"""Transformers end to end: every weight quantized, exported int8 and matched by onnxruntime."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import vision_transformer

from adaround_lightning import AdaroundConfig, QuantConfig, adaround
from tests.helpers.export import assert_exported_with_parity
from tests.helpers.models import tiny_swin

CPU = {"accelerator": "cpu", "devices": 1}


def _tiny(name: str) -> nn.Module:
    """torchvision's own classes at a tiny width (the code paths of vit_b_16 and swin_t)."""
    if name == "vit":
        model: nn.Module = vision_transformer.VisionTransformer(
            image_size=16,
            patch_size=4,
            num_layers=2,
            num_heads=2,
            hidden_dim=16,
            mlp_dim=32,
            num_classes=5,
        )
        nn.init.normal_(model.heads.head.weight, std=0.2)  # torchvision starts it at zero
    else:
        model = tiny_swin()
    return model.eval()


def _check_export(model: nn.Module, size: int, tmp_path: Path, iters: int = 4) -> None:
    torch.manual_seed(0)
    images = torch.randn(32, 3, size, size)
    result = adaround(
        model,
        images,
        QuantConfig(weight_bits=4),
        AdaroundConfig(iters=iters, batch_size=16),
        CPU,
        progress=False,
    )
    assert result.coverage is not None and result.coverage.left_in_float == {}
    # Every attention projection is fitted jointly with its encoder/Swin block.
    attention = [r for r in result.layers if "attention" in r.name or ".attn." in r.name]
    assert attention and all(r.block is not None and r.block in r.name for r in attention)
    assert_exported_with_parity(result, images, tmp_path)


@pytest.mark.parametrize("name", ["vit", "swin"])
def test_a_tiny_transformer_is_fully_quantized_and_exported_with_parity(
    name: str, tmp_path: Path
) -> None:
    _check_export(_tiny(name), 16 if name == "vit" else 8, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_b_16", "swin_t"])
def test_the_torchvision_transformers_at_a_small_input(name: str, tmp_path: Path) -> None:
    kwargs = {"image_size": 32} if name == "vit_b_16" else {}
    model = torchvision.models.get_model(name, **kwargs).eval()
    if name == "vit_b_16":
        nn.init.normal_(model.heads.head.weight, std=0.02)
    _check_export(model, 32, tmp_path, iters=2)

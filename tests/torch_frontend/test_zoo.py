"""The models users bring: timm, Hugging Face and torchvision beyond classification.

Random weights from configs (no downloads), small inputs, a few steps. For each: every
Conv/Linear/attention weight quantized, block reconstruction where the model has residual or
transformer blocks, the export checked by onnxruntime and the grid check, and the files loaded
back into a fresh model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn

from adaround_lightning import AdaroundConfig, EngineConfig, QuantConfig, adaround, load_quantized
from adaround_lightning.export import verify_grid
from adaround_lightning.graph.outputs import output_tensors

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

CPU = {"accelerator": "cpu", "devices": 1}


def _timm(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


def _hf(kind: str) -> Callable[[], nn.Module]:
    t = transformers

    def build() -> nn.Module:
        if kind == "vit":
            config = t.ViTConfig(
                image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=64, num_labels=10,
            )  # fmt: skip
            return t.ViTForImageClassification(config)
        if kind == "convnext":
            config = t.ConvNextConfig(
                hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1], num_labels=10
            )
            return t.ConvNextForImageClassification(config)
        if kind == "resnet":
            config = t.ResNetConfig(
                embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_labels=10
            )
            return t.ResNetForImageClassification(config)
        config = t.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 2], num_heads=[1, 2],
            window_size=4, num_labels=10,
        )  # fmt: skip
        return t.SwinForImageClassification(config)

    return build


def _tv(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    return lambda: torchvision.models.get_model(name, weights=None, **kwargs)


VIT = {"img_size": 32, "patch_size": 8}
#: name -> (builder, input shape without the batch, whether it has multi-layer blocks)
ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], bool]] = {
    "timm_resnet18": (_timm("resnet18"), (3, 32, 32), True),
    "timm_efficientnet_b0": (_timm("efficientnet_b0"), (3, 32, 32), True),
    "timm_regnety_002": (_timm("regnety_002"), (3, 32, 32), True),
    "timm_mobilevitv2_050": (_timm("mobilevitv2_050"), (3, 64, 64), True),
    "timm_convnext_nano": (_timm("convnext_nano"), (3, 32, 32), True),
    "timm_vit": (_timm("vit_tiny_patch16_224", **VIT), (3, 32, 32), True),
    "timm_deit": (_timm("deit_tiny_patch16_224", **VIT), (3, 32, 32), True),
    "hf_vit": (_hf("vit"), (3, 32, 32), True),
    "hf_convnext": (_hf("convnext"), (3, 64, 64), True),
    "hf_resnet": (_hf("resnet"), (3, 64, 64), True),
    # Swin's layers take the feature map's size as a second argument: fitted layer by layer.
    "hf_swin": (_hf("swin"), (3, 32, 32), True),
    "tv_deeplabv3": (
        _tv("deeplabv3_mobilenet_v3_large", num_classes=4, weights_backbone=None),
        (3, 64, 64),
        True,
    ),
    "tv_lraspp": (
        _tv("lraspp_mobilenet_v3_large", num_classes=4, weights_backbone=None),
        (3, 64, 64),
        True,
    ),
    "tv_ssdlite": (
        _tv("ssdlite320_mobilenet_v3_large", num_classes=3, weights_backbone=None),
        (3, 64, 64),
        True,
    ),
    "tv_r3d_18": (_tv("r3d_18", num_classes=4), (3, 4, 16, 16), True),
}
#: Detections after NMS: the box count depends on the scores, so the exported graph's outputs
#: are checked to run, not compared (the grid check still reads every integer of the file).
NO_PARITY = {"tv_ssdlite"}
#: In the default suite; the rest are marked slow.
FAST = {"timm_resnet18", "timm_efficientnet_b0", "timm_vit", "hf_vit", "hf_resnet", "tv_lraspp"}


def _onnx_outputs(path: Path, x: torch.Tensor) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def _cases() -> list[object]:
    return [
        pytest.param(name, marks=() if name in FAST else pytest.mark.slow) for name in sorted(ZOO)
    ]


@pytest.mark.parametrize("name", _cases())
def test_a_zoo_model_is_quantized_exported_and_loaded_back(name: str, tmp_path: Path) -> None:
    build, shape, has_blocks = ZOO[name]
    torch.manual_seed(0)
    model = build().eval()
    images = torch.randn(32, *shape)
    result = adaround(
        model, images, QuantConfig(weight_bits=4), AdaroundConfig(iters=4, batch_size=16), CPU,
        progress=False, engine=EngineConfig(steps_per_batch=1),
    )  # fmt: skip
    assert result.coverage is not None and result.coverage.left_in_float == {}
    assert result.coverage.fraction == 1.0
    in_blocks = sum(1 for report in result.layers if report.block)
    assert (in_blocks > 0) == has_blocks, f"{in_blocks} of {len(result.layers)} in blocks"

    files = result.save(tmp_path, images[:2])
    assert verify_grid(tmp_path)["passed"]
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = [t.numpy() for t in output_tensors(result.model(x))]
    if "onnx" in files:
        exported = _onnx_outputs(tmp_path / files["onnx"], x)
        assert exported
        for got, want in zip(exported, expected if name not in NO_PARITY else [], strict=False):
            assert got.shape == want.shape
            assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))

    loaded = load_quantized(tmp_path, copy.deepcopy(build()).eval())
    with torch.no_grad():
        again = [t.numpy() for t in output_tensors(loaded(x))]
    for got, want in zip(again, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

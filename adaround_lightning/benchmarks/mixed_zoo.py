r"""Mixed precision on models outside the tests: the torchvision zoo, segmentation, video, timm, HF.

Random-init models at small inputs, 16 (8) random images, ``quant.average_bits=3`` with
``iters=1``: whether every layer's sensitivity is measured (``errors_measured`` equal to
``layers``; a layer no gradient reaches keeps ``quant.weight_bits``, logged), the budget holds and
how long the sensitivity pass takes. One JSON line per model::

    python -m adaround_lightning.benchmarks.mixed_zoo [NAME ...]
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings

import torch
import torchvision
from torch import nn

from adaround_lightning import QuantConfig
from adaround_lightning.benchmarks.common import one_iteration_adaround

__all__ = ["CASES", "main"]


def tv(name, size, **kw):
    torch.manual_seed(0)
    m = torchvision.models.get_model(name, **kw).eval()
    if name.startswith("vit_"):
        nn.init.normal_(m.heads.head.weight, std=0.02)
    return m, torch.randn(16, 3, size, size)


def seg(name):
    torch.manual_seed(0)
    m = torchvision.models.get_model(
        name, weights=None, weights_backbone=None, num_classes=5
    ).eval()
    return m, torch.randn(8, 3, 64, 64)


def video():
    torch.manual_seed(0)
    return torchvision.models.get_model("r3d_18").eval(), torch.randn(8, 3, 4, 32, 32)


def timm_model(name, size):
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10).eval(), torch.randn(
        16, 3, size, size
    )


def hf_vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        num_labels=10,
    )
    return ViTForImageClassification(cfg).eval(), torch.randn(16, 3, 32, 32)


CASES = {
    "mobilenet_v3_large": lambda: tv("mobilenet_v3_large", 32),
    "vit_b_16": lambda: tv("vit_b_16", 32, image_size=32),
    "swin_t": lambda: tv("swin_t", 32),
    "efficientnet_b0": lambda: tv("efficientnet_b0", 32),
    "fcn_resnet50 (segmentation, dict output)": lambda: seg("fcn_resnet50"),
    "lraspp_mobilenet_v3_large (segmentation)": lambda: seg("lraspp_mobilenet_v3_large"),
    "r3d_18 (video, Conv3d)": video,
    "timm convnext_atto": lambda: timm_model("convnext_atto", 32),
    "timm vit_tiny_patch16_224": lambda: timm_model("vit_tiny_patch16_224", 224),
    "HF ViTForImageClassification": hf_vit,
}


def main(argv: list[str] | None = None) -> int:
    """One JSON line per model of :data:`CASES` whose name contains an argument (all without)."""
    wanted = sys.argv[1:] if argv is None else argv
    for name, make in CASES.items():
        if wanted and not any(a in name for a in wanted):
            continue
        try:
            model, images = make()
            start = time.perf_counter()
            r = one_iteration_adaround(model, images, QuantConfig(average_bits=3.0))
            a = r.bit_allocation
            counts = {}
            for b in a.bits.values():
                counts[b] = counts.get(b, 0) + 1
            sys.stdout.write(
                json.dumps(
                    {
                        "model": name,
                        "layers": len(a.bits),
                        "errors_measured": len(a.errors),
                        "fixed": a.fixed,
                        "average_bits": round(a.average_bits, 3),
                        "size_mb": round(a.size_bytes / 1e6, 3),
                        "bits": dict(sorted(counts.items())),
                        "sensitivity_s": round(a.seconds, 1),
                        "total_s": round(time.perf_counter() - start, 1),
                        "coverage": round(r.coverage.fraction, 4),
                    }
                )
                + "\n"
            )
        except Exception as e:
            sys.stdout.write(
                json.dumps({"model": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}) + "\n"
            )
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    raise SystemExit(main())

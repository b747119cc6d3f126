"""Tiny instances of torchvision's own model classes: the code paths of the full-size models."""

from __future__ import annotations

from torchvision.models import swin_transformer


def tiny_swin(version: int = 1, num_classes: int = 5) -> swin_transformer.SwinTransformer:
    """A two-stage Swin of width 8 on 2x2 windows (V1, or V2's blocks and patch merging)."""
    kwargs = {}
    if version == 2:
        kwargs = {
            "block": swin_transformer.SwinTransformerBlockV2,
            "downsample_layer": swin_transformer.PatchMergingV2,
        }
    return swin_transformer.SwinTransformer(
        patch_size=[2, 2],
        embed_dim=8,
        depths=[2, 2],
        num_heads=[2, 2],
        window_size=[2, 2],
        num_classes=num_classes,
        **kwargs,
    )

"""The preprocessing a network's pretrained weights were trained with.

torchvision weights carry their transforms (``resnet50`` ``IMAGENET1K_V2``: resize 232, crop
224), timm models a data config (input size, ``crop_pct``, mean, std), Hugging Face folders an
image processor. Calibrating with other preprocessing quantizes for inputs the model never sees.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from torch import nn

from adaround_lightning.models.model_builder import ModelConfig
from adaround_lightning.models.zoo_sources import ModelSource

__all__ = ["weights_preprocessing"]

log = logging.getLogger(__name__)


def _torchvision(config: ModelConfig) -> dict[str, Any] | None:
    import torchvision

    weights_enum = torchvision.models.get_model_weights(config.name)
    weight = weights_enum.DEFAULT if config.weights == "DEFAULT" else weights_enum[config.weights]
    transforms = weight.transforms()
    return {
        "resize": int(transforms.resize_size[0]),
        "crop": int(transforms.crop_size[0]),
        "mean": list(transforms.mean),
        "std": list(transforms.std),
    }


def _timm(model: nn.Module) -> dict[str, Any]:
    from timm.data import resolve_data_config

    data = resolve_data_config({}, model=model)
    crop = int(data["input_size"][-1])
    return {
        "resize": math.floor(crop / data.get("crop_pct", 1.0)),
        "crop": crop,
        "mean": [float(m) for m in data["mean"]],
        "std": [float(s) for s in data["std"]],
    }


def _hf(config: ModelConfig) -> dict[str, Any] | None:
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(config.name)
    except (OSError, ValueError):  # a folder without preprocessor_config.json
        return None
    size = getattr(processor, "size", None) or {}
    side = size.get("shortest_edge") or size.get("height")
    crop = (getattr(processor, "crop_size", None) or {}).get("height", side)
    if side is None:
        return None
    return {
        "resize": int(side),
        "crop": int(crop),
        "mean": list(processor.image_mean),
        "std": list(processor.image_std),
    }


def weights_preprocessing(config: ModelConfig, model: nn.Module) -> dict[str, Any] | None:
    """``resize``, ``crop``, ``mean`` and ``std`` of the model's pretrained weights, or None.

    None when the model has no pretrained weights (random init or the user's own checkpoint:
    the data settings stand).

    Example:
        >>> cfg = ModelConfig("resnet50", weights="IMAGENET1K_V2")
        >>> weights_preprocessing(cfg, nn.Identity())["resize"]
        232
    """
    if config.onnx is not None:
        return None
    if config.source == ModelSource.HF:
        return _hf(config)
    if config.weights is None:
        return None
    if config.source == ModelSource.TIMM:
        return _timm(model)
    if config.source == ModelSource.TORCHVISION:
        return _torchvision(config)
    return None

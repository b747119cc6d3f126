"""Preprocessing from settings: resize, crop, pad, scale, normalise, grey to three channels."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torchvision.transforms.v2 as T

from adaround_lightning.core.errors import UserError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PreprocessConfig", "build_transform"]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class PreprocessConfig:
    """How an image becomes a model input.

    Attributes:
        resize: Shorter side after resizing (None: keep).
        crop: Side of the centre crop (None: none).
        pad: Zero padding added to each border, before normalisation.
        mean: Per-channel mean (one value broadcasts to all channels).
        std: Per-channel standard deviation.
        grayscale_to_rgb: Repeat a single grey channel three times (after normalisation).
    """

    resize: int | None = 256
    crop: int | None = 224
    pad: int = 0
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    grayscale_to_rgb: bool = False

    def __post_init__(self) -> None:
        self.mean = [float(m) for m in self.mean]
        self.std = [float(s) for s in self.std]
        if len(self.mean) != len(self.std) or not self.mean:
            raise UserError("data.preprocess.mean and .std must have the same, non-zero length")
        if any(s <= 0 for s in self.std):
            raise UserError("data.preprocess.std values must be > 0")
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"data.preprocess.{name} must be positive or null, got {value}")
        if self.pad < 0:
            raise UserError(f"data.preprocess.pad must be >= 0, got {self.pad}")


class _CheckedNormalize(torch.nn.Module):
    """``Normalize`` that names the setting when mean/std do not fit the image's channels."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.normalize = T.Normalize(mean, std)
        self.values = len(mean)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        channels = image.shape[-3]
        if self.values not in (1, channels):
            noun = "channel" if channels == 1 else "channels"
            fix = "give 1 value each" if channels == 1 else f"give 1 or {channels} values each"
            raise UserError(
                f"data.preprocess.mean and .std have {self.values} values but the images have "
                f"{channels} {noun}: {fix}"
            )
        return self.normalize(image)


class _RepeatChannels(torch.nn.Module):
    """(…, 1, H, W) -> (…, 3, H, W); three-channel input passes unchanged."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-3] == 1:
            return image.expand(*image.shape[:-3], 3, *image.shape[-2:]).clone()
        return image


def build_transform(config: PreprocessConfig) -> T.Compose:
    """A torchvision v2 transform for PIL images or uint8 tensors ``(…, C, H, W)``.

    Example:
        >>> t = build_transform(PreprocessConfig(resize=None, crop=None, pad=2, mean=[0.5],
        ...                                      std=[0.5], grayscale_to_rgb=True))
        >>> t(torch.zeros(1, 28, 28, dtype=torch.uint8)).shape
        torch.Size([3, 32, 32])
    """
    steps: list[torch.nn.Module] = [T.ToImage()]
    if config.resize is not None:
        steps.append(T.Resize(config.resize, antialias=True))
    if config.crop is not None:
        steps.append(T.CenterCrop(config.crop))
    if config.pad:
        steps.append(T.Pad(config.pad, fill=0))
    steps.append(T.ToDtype(torch.float32, scale=True))
    steps.append(_CheckedNormalize(config.mean, config.std))
    if config.grayscale_to_rgb:
        steps.append(_RepeatChannels())
    return T.Compose(steps)

"""What both benchmark runners share: architectures, the model builder, data, flags.

Nothing in the library imports the benchmarks leaf; both runners import this module, so the
AIMET runner and ours see the same network and the same calibration and test images.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from adaround_lightning.data.sources import (
    CalibrationConfig,
    DataConfig,
    calibration_images,
    evaluation_dataset,
)
from adaround_lightning.data.transforms import PreprocessConfig
from adaround_lightning.models.model_builder import QUICKSTART_ARCH, ModelConfig
from adaround_lightning.models.model_builder import build_model as library_build_model

__all__ = [
    "ARCHS",
    "FASHION_MNIST_PREPROCESS",
    "FLOAT_ACTS",
    "QUICKSTART_KWARGS",
    "VIT_TINY_KWARGS",
    "build_model",
    "fashion_mnist_data",
    "one_iteration_adaround",
    "parse_bool",
]

#: A small Vision Transformer for 32x32 Fashion-MNIST (torchvision's own ``VisionTransformer``
#: class: 64 patches of 4x4 plus the class token, 4 encoder blocks of width 64).
VIT_TINY_KWARGS: dict[str, Any] = {
    "image_size": 32,
    "patch_size": 4,
    "num_layers": 4,
    "num_heads": 4,
    "hidden_dim": 64,
    "mlp_dim": 128,
}
#: Architectures of ``--arch``: the builder or class name, its keyword arguments and the model
#: source (``torchvision`` or ``timm``: ``timm_resnet18`` is ``timm.create_model("resnet18")``,
#: whose blocks are found by the trace rather than by a class list).
ARCHS: dict[str, tuple[str, dict[str, Any], str]] = {
    "resnet18": ("resnet18", {}, "torchvision"),
    "mobilenet_v2": ("mobilenet_v2", {}, "torchvision"),
    "vit_tiny": ("VisionTransformer", VIT_TINY_KWARGS, "torchvision"),
    "timm_resnet18": ("resnet18", {}, "timm"),
}
#: ``--act-bits`` value meaning "activations in float" (weights-only quantization).
FLOAT_ACTS = 32
#: Fashion-MNIST preprocessing of our recipes: 28x28 -> zero pad 2 -> normalise -> grey to RGB.
FASHION_MNIST_PREPROCESS = {
    "resize": None,
    "crop": None,
    "pad": 2,
    "mean": [0.2860],
    "std": [0.3530],
    "grayscale_to_rgb": True,
}
#: ``--arch-kwargs`` of the quickstart checkpoint (``adaround_lightning/assets/quickstart``).
QUICKSTART_KWARGS: dict[str, Any] = dict(QUICKSTART_ARCH["kwargs"])


def build_model(
    arch: str, checkpoint: str | os.PathLike[str], arch_kwargs: dict[str, Any] | None = None
) -> nn.Module:
    """The ``--arch`` network (``num_classes=10``, ``**arch_kwargs``) with a float32 state_dict.

    Built by the library's own model builder
    (:func:`adaround_lightning.models.model_builder.build_model`),
    so both runners calibrate the network the app would.

    Args:
        arch: A key of :data:`ARCHS`: ``resnet18``, ``mobilenet_v2``, ``vit_tiny`` or
            ``timm_resnet18``.
        checkpoint: Path of a ``torch.save``-d state_dict.
        arch_kwargs: Keyword arguments of the builder (``num_classes`` defaults to 10).

    Returns:
        The model in eval mode, on the CPU.

    Example:
        >>> model = build_model("mobilenet_v2", "embedded://quickstart/model.pt", QUICKSTART_KWARGS)
        >>> model.classifier[1].out_features
        10
    """
    if arch not in ARCHS:
        raise ValueError(f"--arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    name, preset, source = ARCHS[arch]
    kwargs = {"num_classes": 10, **preset, **(arch_kwargs or {})}
    num_classes = kwargs.pop("num_classes")
    config = ModelConfig(
        name=name,
        num_classes=num_classes,
        kwargs=kwargs,
        checkpoint=str(checkpoint),
        source=source,  # type: ignore[arg-type]
    )
    return library_build_model(config).float().eval()


def fashion_mnist_data(
    source: str, root: str | None, num_samples: int, calib_seed: int = 0
) -> tuple[torch.Tensor, Dataset]:
    """Calibration images and the labelled test set, loaded by our package's loaders.

    Args:
        source: ``fashion_mnist`` (idx files under ``root``) or ``embedded`` (shipped sample,
            5000 test images).
        root: Folder of the idx files (ignored by ``embedded``).
        num_samples: Calibration images drawn from the train split.
        calib_seed: Seed of the draw (our ``data.calibration.seed``).

    Returns:
        ``(calib, test)``: a ``(N, 3, 32, 32)`` float32 tensor and a dataset of
        ``(image, label)``.

    Example:
        >>> calib, test = fashion_mnist_data("embedded", None, 64)  # doctest: +SKIP
        >>> calib.shape, len(test)  # doctest: +SKIP
        (torch.Size([64, 3, 32, 32]), 5000)
    """
    config = DataConfig(
        source=source,
        root=None if source == "embedded" else root,
        calibration=CalibrationConfig(size=num_samples, seed=calib_seed, split="train"),
        eval_split="test",
        eval_size=None,
        preprocess=PreprocessConfig(**FASHION_MNIST_PREPROCESS),  # type: ignore[arg-type]
    )
    return calibration_images(config), evaluation_dataset(config)


def parse_bool(text: str) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``) of a command-line flag.

    Example:
        >>> parse_bool("False")
        False
    """
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "y"):
        return True
    if lowered in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def one_iteration_adaround(model: nn.Module, images: torch.Tensor, quant: Any) -> Any:
    """:func:`~adaround_lightning.api.adaround` with one step per fit on the CPU, quietly.

    The zoo runners' check that a model goes through the walk (its coverage, blocks, files),
    not a calibration worth evaluating.

    Example:
        >>> from adaround_lightning import QuantConfig
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
        >>> len(one_iteration_adaround(net, torch.randn(16, 4), QuantConfig()).layers)
        2
    """
    from adaround_lightning import AdaroundConfig, adaround

    config = AdaroundConfig(iters=1, batch_size=8)
    return adaround(model, images, quant, config, {"accelerator": "cpu"}, progress=False)

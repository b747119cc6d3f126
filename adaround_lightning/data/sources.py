"""Where calibration and evaluation images come from.

Sources (``data.source``):

* ``embedded``: the Fashion-MNIST sample shipped in the package (quickstart), no network needed.
* ``fashion_mnist``: a folder with the original idx files (``train-images-idx3-ubyte.gz``, ...),
  as Debian's ``dataset-fashion-mnist`` installs them in /usr/share/datasets/fashion-mnist.
* ``imagefolder``: any ``torchvision.datasets.ImageFolder`` tree with one sub-folder per split.
* ``imagenet``: the ImageNet layout, ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``.
* ``text``: a text file and the model's tokenizer (``data.text``, ``data.eval_text``,
  ``data.tokenizer``, ``data.seq_len``): token windows ``(N, L)`` for a causal language model,
  evaluated by perplexity (:mod:`adaround_lightning.data.text`).

Calibration draws ``calibration.size`` images at random (seeded) from ``calibration.split``; the
labels are never used. Evaluation uses ``eval_split`` (optionally its first ``eval_size`` images).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from adaround_lightning.core.choices import Choice
from adaround_lightning.core.errors import UserError
from adaround_lightning.data.assets import ASSETS_DIR
from adaround_lightning.data.idx import load_fashion_mnist
from adaround_lightning.data.text import (
    TextConfig,
    TokenText,
    calibration_windows,
    evaluation_windows,
    read_tokens,
)
from adaround_lightning.data.transforms import PreprocessConfig, build_transform

__all__ = [
    "EMBEDDED_SAMPLE",
    "SOURCES",
    "CalibrationConfig",
    "DataConfig",
    "DataSource",
    "calibration_images",
    "evaluation_dataset",
]

log = logging.getLogger(__name__)


class DataSource(Choice):
    """Where the images come from (``data.source``)."""

    EMBEDDED = "embedded"
    FASHION_MNIST = "fashion_mnist"
    IMAGEFOLDER = "imagefolder"
    IMAGENET = "imagenet"
    #: A folder of unlabelled images (searched recursively): calibration only.
    IMAGES = "images"
    #: A text file and a tokenizer: token windows for a causal language model
    #: (:mod:`adaround_lightning.data.text`).
    TEXT = "text"


#: The words of :class:`DataSource`.
SOURCES = DataSource.words()
#: The Fashion-MNIST sample shipped for the quickstart.
EMBEDDED_SAMPLE = ASSETS_DIR / "quickstart" / "fashion_mnist_sample.npz"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class CalibrationConfig:
    """The calibration set.

    Attributes:
        size: Number of images drawn.
        seed: Seed of the draw.
        split: Split (sub-folder) drawn from.
    """

    size: int = 1024
    seed: int = 0
    split: str = "train"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise UserError(f"data.calibration.size must be a positive integer, got {self.size!r}")


@dataclass
class DataConfig:
    """Calibration and evaluation data.

    Attributes:
        source: One of ``embedded``, ``fashion_mnist``, ``imagefolder``, ``imagenet`` or
            ``images`` (a folder of unlabelled images, searched recursively; no evaluation).
        root: Folder of the data (unused by ``embedded``).
        calibration: Size, seed and split of the calibration set.
        eval_split: Split evaluated (``val`` for ImageFolder layouts, ``test`` for Fashion-MNIST);
            None: no evaluation (no accuracy table; the float and quantized outputs are still
            compared on the calibration images).
        eval_size: Evaluate only the first ``eval_size`` images (None: all).
        preprocess: Resize, crop, pad, mean/std, grey to RGB.
        batch_size: Batch size of evaluation and of loading calibration images.
        num_workers: DataLoader workers for image folders.
    """

    source: DataSource = DataSource.EMBEDDED
    root: str | None = None
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    eval_split: str | None = "val"
    eval_size: int | None = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    batch_size: int = 256
    num_workers: int = 2
    text: str | None = None
    eval_text: str | None = None
    tokenizer: str | None = None
    seq_len: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.calibration, dict):
            self.calibration = CalibrationConfig(**self.calibration)
        if isinstance(self.preprocess, dict):
            self.preprocess = PreprocessConfig(**self.preprocess)
        if self.source not in SOURCES:
            raise UserError(
                f"data.source={self.source!r} is unknown; use one of {', '.join(SOURCES)}"
            )
        self.source = DataSource(self.source)
        if self.source == DataSource.TEXT:
            self._check_text()
        elif self.source != "embedded":
            if not self.root:
                raise UserError(
                    f"data.root is not set: pass data.root=PATH for data.source={self.source}"
                )
            root = Path(self.root).expanduser()
            if not root.is_dir():
                raise UserError(
                    f"data.root={self.root} is not a folder: pass an existing data.root=PATH"
                )
        if self.source == DataSource.IMAGES:
            self.eval_split = None  # unlabelled: nothing to score against
        if self.eval_size is not None and self.eval_size < 1:
            raise UserError(f"data.eval_size must be positive or null, got {self.eval_size}")
        if self.batch_size < 1 or self.num_workers < 0:
            raise UserError("data.batch_size must be >= 1 and data.num_workers >= 0")

    def _check_text(self) -> None:
        if not self.text:
            raise UserError("data.source=text needs data.text=FILE (the calibration text)")
        if not self.tokenizer:
            raise UserError("data.source=text needs data.tokenizer=PATH (the model's folder)")
        for key in ("text", "eval_text"):  # before the model is loaded, which takes a while
            path = getattr(self, key)
            if path is not None and not Path(path).expanduser().is_file():
                raise UserError(f"data.{key}={path} is not a file: pass an existing text file")
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise UserError(f"data.seq_len must be an integer of at least 2, got {self.seq_len!r}")

    @property
    def text_config(self) -> TextConfig:
        """The text settings of ``data.source=text``."""
        return TextConfig(str(self.text), self.eval_text, str(self.tokenizer), self.seq_len)


def _draw(count: int, size: int, seed: int) -> torch.Tensor:
    """``min(size, count)`` distinct indices drawn with ``seed``, sorted."""
    if size > count:
        log.warning(
            "asked for %d calibration images, only %d are available: using all", size, count
        )
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=generator)[: min(size, count)].sort().values


def _transform_uint8(config: DataConfig, images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W)`` grey images -> preprocessed float ``(N, C, H', W')``."""
    transform = build_transform(config.preprocess)
    return transform(torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)).contiguous()


def _load_embedded() -> dict[str, np.ndarray]:
    if not EMBEDDED_SAMPLE.is_file():
        raise UserError(
            f"the embedded sample {EMBEDDED_SAMPLE} is missing: reinstall the package or run "
            "python -m adaround_lightning.benchmarks.train_quickstart"
        )
    with np.load(EMBEDDED_SAMPLE) as sample:
        return {key: sample[key] for key in sample.files}


def _split_dir(config: DataConfig, split: str) -> Path:
    assert config.root is not None
    folder = Path(config.root).expanduser() / split
    if not folder.is_dir():
        raise UserError(
            f"{folder} does not exist: data.root must hold one sub-folder per split "
            f"({config.calibration.split}/ and {config.eval_split}/)"
        )
    return folder


def _read_image(path: str) -> Any:
    """PIL loader that names the file it cannot read."""
    from PIL import Image

    try:
        with open(path, "rb") as handle:
            return Image.open(handle).convert("RGB")
    except OSError as error:
        raise UserError(f"cannot read image {path} ({error}): remove or replace the file") from None


def _image_folder(config: DataConfig, split: str) -> Dataset:
    from torchvision.datasets import ImageFolder

    folder = _split_dir(config, split)
    try:
        return ImageFolder(
            str(folder), transform=build_transform(config.preprocess), loader=_read_image
        )
    except (FileNotFoundError, RuntimeError) as error:
        raise UserError(
            f"{folder} holds no images in class sub-folders ({error}); "
            f"expected {folder}/<class>/<image>{{{','.join(_IMAGE_SUFFIXES)}}}"
        ) from None


class _ImageFiles(Dataset):
    """Every image under a folder, sorted by path, as ``(image, 0)``."""

    def __init__(self, files: list[Path], transform: Any) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(_read_image(str(self.files[index]))), 0


def _unlabelled(config: DataConfig) -> Dataset:
    assert config.root is not None
    root = Path(config.root).expanduser()
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise UserError(
            f"data.root={config.root} holds no images ({', '.join(_IMAGE_SUFFIXES)}): "
            "pass a folder of images"
        )
    return _ImageFiles(files, build_transform(config.preprocess))


def _stack_images(dataset: Dataset, config: DataConfig) -> torch.Tensor:
    loader = DataLoader(dataset, batch_size=config.batch_size, num_workers=config.num_workers)
    try:
        return torch.cat([batch[0] for batch in loader])
    except RuntimeError as error:
        if "equal size" not in str(error) and "same size" not in str(error):
            raise
        raise UserError(
            "the images have different sizes after preprocessing: set data.preprocess.resize "
            "and data.preprocess.crop (e.g. 256 and 224)"
        ) from None
    except UserError as error:
        # From a worker process the message carries the worker's traceback: keep its last line.
        lines = [line for line in str(error).splitlines() if line.strip()]
        message = lines[-1].split("UserError: ", 1)[-1] if lines else "unreadable image"
        raise UserError(message) from None


def calibration_images(config: DataConfig) -> torch.Tensor:
    """The preprocessed calibration images, ``(N, C, H, W)`` float32 on the CPU.

    Example:
        >>> config = DataConfig(source="embedded", calibration=CalibrationConfig(size=8),
        ...                     preprocess=PreprocessConfig(resize=None, crop=None, pad=2,
        ...                     mean=[0.286], std=[0.353], grayscale_to_rgb=True))
        >>> calibration_images(config).shape
        torch.Size([8, 3, 32, 32])
    """
    calib = config.calibration
    if config.source == DataSource.TEXT:  # token ids (N, L), int64
        tokens = _token_text(config.text_config).calibration
        return calibration_windows(tokens, calib.size, config.seq_len, calib.seed)
    if config.source == "embedded":
        images = _load_embedded()["calib_images"]
        return _transform_uint8(config, images[_draw(len(images), calib.size, calib.seed).numpy()])
    if config.source == "fashion_mnist":
        images, _ = _fashion_mnist(config, calib.split)
        return _transform_uint8(config, images[_draw(len(images), calib.size, calib.seed).numpy()])
    dataset = (
        _unlabelled(config) if config.source == "images" else _image_folder(config, calib.split)
    )
    subset = Subset(dataset, _draw(len(dataset), calib.size, calib.seed).tolist())
    return _stack_images(subset, config)


def _fashion_mnist(config: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in ("train", "test"):
        raise UserError(f"Fashion-MNIST splits are 'train' and 'test', got {split!r}")
    try:
        return load_fashion_mnist(config.root or "", split)
    except FileNotFoundError as error:
        raise UserError(str(error).splitlines()[0]) from None


@functools.lru_cache(maxsize=2)
def _token_text(config: TextConfig) -> TokenText:
    """The text's tokens, read once for calibration and evaluation."""
    return read_tokens(config)


def evaluation_dataset(config: DataConfig) -> Dataset | None:
    """The labelled evaluation set, items ``(image, label)``; None without ``eval_split``.

    Example:
        >>> config = DataConfig(source="embedded", eval_split="test", eval_size=10,
        ...                     preprocess=PreprocessConfig(resize=None, crop=None, pad=2,
        ...                     mean=[0.286], std=[0.353], grayscale_to_rgb=True))
        >>> len(evaluation_dataset(config))
        10
    """
    if config.eval_split is None:
        return None
    if config.source == DataSource.TEXT:  # consecutive windows (M, L) of the held-out text
        tokens = _token_text(config.text_config).evaluation
        return TensorDataset(evaluation_windows(tokens, config.seq_len, config.eval_size))
    if config.source in ("embedded", "fashion_mnist"):
        if config.source == "embedded":
            sample = _load_embedded()
            images, labels = sample["test_images"], sample["test_labels"]
        else:
            images, labels = _fashion_mnist(config, config.eval_split)
        if config.eval_size is not None:
            images, labels = images[: config.eval_size], labels[: config.eval_size]
        return TensorDataset(_transform_uint8(config, images), torch.as_tensor(labels).long())
    dataset = _image_folder(config, config.eval_split)
    if config.eval_size is not None:
        dataset = Subset(dataset, list(range(min(config.eval_size, len(dataset)))))  # type: ignore[arg-type]
    return dataset

"""Train the small MobileNetV2 used by the quickstart and write its assets.

Run as::

    python -m adaround_lightning.benchmarks.train_quickstart \
        [--root DIR] [--epochs N] [--out DIR] [--seed S]

It trains :data:`QUICKSTART_ARCH` on the full Fashion-MNIST train split with a real
``lightning.Trainer``, evaluates it on the full test split and writes ``model.pt`` (plain
float32 ``state_dict``), ``fashion_mnist_sample.npz`` (calibration + test sample),
``meta.json`` and ``LICENSE-fashion-mnist.txt`` to ``--out`` (by default the package's
``assets/quickstart/`` folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from adaround_lightning.data.assets import ASSETS_DIR
from adaround_lightning.data.idx import FASHION_MNIST_DEFAULT_ROOT, load_fashion_mnist
from adaround_lightning.models.model_builder import QUICKSTART_ARCH

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_OUT_DIR",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "QUICKSTART_ARCH",
    "QUICKSTART_INPUT_SIZE",
    "QuickstartModule",
    "build_quickstart_model",
    "main",
    "quickstart_transform_tensor",
]

#: Mean of Fashion-MNIST pixels scaled to [0, 1] (train split).
FASHION_MNIST_MEAN = 0.2860
#: Standard deviation of Fashion-MNIST pixels scaled to [0, 1] (train split).
FASHION_MNIST_STD = 0.3530

#: Model input shape ``(C, H, W)`` after :func:`quickstart_transform_tensor`.
QUICKSTART_INPUT_SIZE: tuple[int, int, int] = (3, 32, 32)

#: Default output folder: ``adaround_lightning/assets/quickstart/``.
DEFAULT_OUT_DIR = ASSETS_DIR / "quickstart"

_PAD = 2
_CALIB_SIZE = 1024
_TEST_SAMPLE_SIZE = 5000

_FASHION_MNIST_LICENSE = """\
The sample in fashion_mnist_sample.npz is taken from Fashion-MNIST by Zalando Research
(https://github.com/zalandoresearch/fashion-mnist), distributed under the MIT licence below.

The MIT License (MIT)

Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def quickstart_transform_tensor(images_uint8: Tensor) -> Tensor:
    """Turn raw Fashion-MNIST images into quickstart model inputs.

    Pixels are scaled to [0, 1], zero-padded by 2 pixels on each side (28x28 -> 32x32, the
    padding is applied *before* normalizing, so the border equals ``-mean / std``),
    normalized with :data:`FASHION_MNIST_MEAN` / :data:`FASHION_MNIST_STD` and the grey
    channel is repeated to 3 channels.

    Args:
        images_uint8: ``(N, 28, 28)`` uint8 tensor (any integer/float tensor of raw 0..255
            pixel values is accepted).

    Returns:
        ``(N, 3, 32, 32)`` float32 tensor.

    Example:
        >>> x = quickstart_transform_tensor(torch.zeros(4, 28, 28, dtype=torch.uint8))
        >>> tuple(x.shape)
        (4, 3, 32, 32)
    """
    if images_uint8.ndim != 3:
        raise ValueError(f"expected (N, H, W) images, got shape {tuple(images_uint8.shape)}")
    x = images_uint8.to(torch.float32) / 255.0
    x = F.pad(x, (_PAD, _PAD, _PAD, _PAD), value=0.0)
    x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def build_quickstart_model(arch: dict | None = None) -> nn.Module:
    """Build the (untrained) quickstart network.

    Args:
        arch: ``{"name": ..., "kwargs": {...}}`` and optionally ``"source": "timm"``; defaults
            to :data:`QUICKSTART_ARCH`.

    Returns:
        The torchvision (or timm) model, e.g. a ``MobileNetV2``.

    Example:
        >>> model = build_quickstart_model()
        >>> model(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    arch = QUICKSTART_ARCH if arch is None else arch
    if arch.get("source", "torchvision") == "timm":
        import timm  # an optional dependency (extra "zoo")

        return timm.create_model(arch["name"], **arch["kwargs"])
    factory = getattr(torchvision.models, arch["name"])
    return factory(**arch["kwargs"])


def _augment_uint8(images: Tensor, max_shift: int = _PAD) -> Tensor:
    """Random translation by up to ``max_shift`` pixels (zero fill) plus horizontal flip.

    Equivalent to ``RandomCrop(28, padding=max_shift)`` + ``RandomHorizontalFlip`` but
    vectorized over the batch.

    Args:
        images: ``(B, H, W)`` uint8 batch.
        max_shift: Largest shift in pixels along each axis.

    Returns:
        The augmented ``(B, H, W)`` batch.
    """
    b, h, w = images.shape
    padded = F.pad(images, (max_shift, max_shift, max_shift, max_shift), value=0)
    gen_device = images.device
    oy = torch.randint(0, 2 * max_shift + 1, (b, 1), device=gen_device)
    ox = torch.randint(0, 2 * max_shift + 1, (b, 1), device=gen_device)
    rows = oy + torch.arange(h, device=gen_device)  # (B, H)
    cols = ox + torch.arange(w, device=gen_device)  # (B, W)
    flip = torch.rand(b, 1, device=gen_device) < 0.5
    cols = torch.where(flip, cols.flip(1), cols)
    batch_idx = torch.arange(b, device=gen_device)[:, None, None]
    return padded[batch_idx, rows[:, :, None], cols[:, None, :]]


class QuickstartModule(L.LightningModule):
    """LightningModule training the quickstart classifier on raw uint8 batches.

    Batches are ``(images_uint8 (B, 28, 28), labels (B,))``; augmentation (training only)
    and :func:`quickstart_transform_tensor` run inside the steps, on the model's device.

    Example:
        >>> module = QuickstartModule(max_lr=0.1, weight_decay=5e-5, label_smoothing=0.1)
        >>> module.model.classifier[-1].out_features
        10
    """

    def __init__(
        self,
        arch: dict | None = None,
        max_lr: float = 0.2,
        weight_decay: float = 5e-5,
        label_smoothing: float = 0.1,
        augment: bool = True,
        optimizer: str = "sgd",
    ) -> None:
        """Create the module.

        Args:
            arch: Architecture dict, defaults to :data:`QUICKSTART_ARCH`.
            max_lr: Peak learning rate of the OneCycle schedule (SGD, Nesterov momentum).
            weight_decay: L2 weight decay (not applied to BatchNorm parameters and biases).
            label_smoothing: Cross-entropy label smoothing during training.
            augment: Whether to apply random shift + horizontal flip during training.
            optimizer: ``sgd`` (Nesterov momentum) or ``adamw`` (transformers).
        """
        super().__init__()
        self.save_hyperparameters()
        # channels_last is markedly faster for depthwise convs on CPU; parameters are made
        # contiguous again when saving the state_dict.
        self.model = build_quickstart_model(arch).to(memory_format=torch.channels_last)
        self.max_lr = max_lr
        self.weight_decay = weight_decay
        self.label_smoothing = label_smoothing
        self.augment = augment
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be sgd or adamw, got {optimizer!r}")
        self.optimizer_name = optimizer

    def forward(self, images_uint8: Tensor) -> Tensor:
        """Return logits for raw uint8 images ``(B, 28, 28)``."""
        x = quickstart_transform_tensor(images_uint8).contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """One optimization step on an (augmented) batch."""
        images, labels = batch
        if self.augment:
            images = _augment_uint8(images)
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        acc = (logits.argmax(1) == labels).float().mean()
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        self.log("train_acc", acc, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def on_train_epoch_end(self) -> None:
        """Log the epoch's mean training loss/accuracy (visible without a progress bar)."""
        metrics = self.trainer.callback_metrics
        logger.info(
            "epoch %d/%d: train_loss %.4f train_acc %.4f",
            self.current_epoch + 1,
            self.trainer.max_epochs,
            float(metrics.get("train_loss_epoch", float("nan"))),
            float(metrics.get("train_acc", float("nan"))),
        )

    def _eval_step(self, batch: tuple[Tensor, Tensor], prefix: str) -> None:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(1) == labels).float().mean()
        self.log(f"{prefix}_loss", loss, prog_bar=True)
        self.log(f"{prefix}_acc", acc, prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Log loss/accuracy on a held-out batch."""
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Log loss/accuracy on a test batch."""
        self._eval_step(batch, "test")

    def configure_optimizers(self) -> Any:
        """SGD (Nesterov) or AdamW, a per-step OneCycle schedule; no decay on norms/biases."""
        decay, no_decay = [], []
        for param in self.model.parameters():
            (no_decay if param.ndim <= 1 else decay).append(param)
        groups = [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if self.optimizer_name == "adamw":
            optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=self.max_lr)
        else:
            optimizer = torch.optim.SGD(groups, lr=self.max_lr, momentum=0.9, nesterov=True)
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.max_lr, total_steps=total_steps, pct_start=0.25
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


@torch.no_grad()
def _accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (eval mode, CPU) on raw uint8 images.

    Args:
        model: The bare classifier (expects :func:`quickstart_transform_tensor` inputs).
        images: ``(N, 28, 28)`` uint8.
        labels: ``(N,)`` int64.
        batch: Evaluation batch size.

    Returns:
        Accuracy in [0, 1].
    """
    model.eval()
    correct = 0
    for start in range(0, len(images), batch):
        x = quickstart_transform_tensor(torch.from_numpy(images[start : start + batch]))
        pred = model(x).argmax(1).numpy()
        correct += int((pred == labels[start : start + batch]).sum())
    return correct / len(images)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train the quickstart MobileNetV2 on Fashion-MNIST and write its assets."
    )
    parser.add_argument(
        "--root", type=Path, default=FASHION_MNIST_DEFAULT_ROOT, help="Fashion-MNIST idx files"
    )
    parser.add_argument("--epochs", type=int, default=10, help="training epochs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed (training and sampling)")
    parser.add_argument("--batch-size", type=int, default=256, help="training batch size")
    parser.add_argument("--max-lr", type=float, default=0.2, help="OneCycle peak LR")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train the quickstart model and write ``model.pt``, the sample, meta and licence.

    Args:
        argv: Command-line arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The metadata written to ``meta.json``.

    Example:
        >>> meta = main(["--epochs", "1", "--out", "/tmp/quickstart"])  # doctest: +SKIP
    """
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    t_start = time.perf_counter()
    L.seed_everything(args.seed, workers=True)

    train_x, train_y = load_fashion_mnist(args.root, "train")
    test_x, test_y = load_fashion_mnist(args.root, "test")
    logger.info("train %s, test %s", train_x.shape, test_x.shape)

    train_ds = TensorDataset(torch.from_numpy(train_x), torch.from_numpy(train_y))
    test_ds = TensorDataset(torch.from_numpy(test_x), torch.from_numpy(test_y))
    train_loader = DataLoader(
        train_ds,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    test_loader = DataLoader(test_ds, batch_size=1000)

    module = QuickstartModule(max_lr=args.max_lr)
    n_params = sum(p.numel() for p in module.model.parameters())
    logger.info("arch %s: %d parameters", QUICKSTART_ARCH, n_params)

    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        log_every_n_steps=50,
        num_sanity_val_steps=0,
    )
    t_fit = time.perf_counter()
    trainer.fit(module, train_dataloaders=train_loader)
    fit_seconds = time.perf_counter() - t_fit
    logger.info("training took %.1f s", fit_seconds)
    test_metrics = trainer.test(module, dataloaders=test_loader, verbose=False)[0]

    model = module.model.to("cpu").float().eval()
    acc_full = _accuracy(model, test_x, test_y)
    acc_sample = _accuracy(model, test_x[:_TEST_SAMPLE_SIZE], test_y[:_TEST_SAMPLE_SIZE])
    logger.info(
        "test accuracy: full 10k %.4f (trainer %.4f), first %d %.4f",
        acc_full,
        float(test_metrics["test_acc"]),
        _TEST_SAMPLE_SIZE,
        acc_sample,
    )

    rng = np.random.default_rng(args.seed)
    calib_idx = np.sort(rng.choice(len(train_x), size=_CALIB_SIZE, replace=False))

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    torch.save(state, out / "model.pt")
    np.savez_compressed(
        out / "fashion_mnist_sample.npz",
        calib_images=train_x[calib_idx].astype(np.uint8),
        test_images=test_x[:_TEST_SAMPLE_SIZE].astype(np.uint8),
        test_labels=test_y[:_TEST_SAMPLE_SIZE].astype(np.int64),
    )
    (out / "LICENSE-fashion-mnist.txt").write_text(_FASHION_MNIST_LICENSE, encoding="utf-8")

    meta: dict[str, Any] = {
        "arch": QUICKSTART_ARCH,
        "num_parameters": n_params,
        "dataset": "Fashion-MNIST",
        "preprocessing": {
            "function": f"{__name__}.quickstart_transform_tensor",
            "steps": [
                "scale uint8 to [0, 1] (divide by 255)",
                "zero-pad 2 pixels on each side (28x28 -> 32x32), before normalizing",
                "normalize (x - mean) / std",
                "repeat grey channel to 3 channels",
            ],
            "mean": FASHION_MNIST_MEAN,
            "std": FASHION_MNIST_STD,
            "pad": _PAD,
            "pad_value": 0.0,
            "input_size": list(QUICKSTART_INPUT_SIZE),
        },
        "training": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "optimizer": "SGD(momentum=0.9, nesterov=True)",
            "max_lr": args.max_lr,
            "schedule": "OneCycleLR(pct_start=0.25), per step",
            "weight_decay": module.weight_decay,
            "label_smoothing": module.label_smoothing,
            "augmentation": "random shift up to 2 px (zero fill) + horizontal flip",
        },
        "seed": args.seed,
        "test_accuracy_full": acc_full,
        "test_accuracy_sample": acc_sample,
        "test_sample_size": _TEST_SAMPLE_SIZE,
        "sample": {
            "calib_images": (
                f"{_CALIB_SIZE} train images, indices "
                f"sorted(numpy.random.default_rng({args.seed}).choice(60000, {_CALIB_SIZE}, "
                "replace=False))"
            ),
            "calib_indices": calib_idx.tolist(),
            "test_images": f"first {_TEST_SAMPLE_SIZE} images of the test (t10k) split",
        },
        "train_wall_seconds": round(fit_seconds, 1),
        "total_wall_seconds": round(time.perf_counter() - t_start, 1),
        "torch_num_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "lightning_version": L.__version__,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote assets to %s", out)
    return meta


if __name__ == "__main__":
    main()

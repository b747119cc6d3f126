"""Train full-size torchvision classifiers on Fashion-MNIST for the benchmarks.

Run as::

    python -m adaround_lightning.benchmarks.train_fashion_mnist --arch resnet18 \
        [--epochs N] [--out DIR]
    python -m adaround_lightning.benchmarks.train_fashion_mnist --arch mobilenet_v2
    python -m adaround_lightning.benchmarks.train_fashion_mnist --arch vit_tiny

The models are the unmodified ``torchvision.models.<arch>(num_classes=10)`` (``vit_tiny``:
torchvision's ``VisionTransformer`` class at 32 px, patch 4, 4 blocks of width 64); Fashion-MNIST
images are padded to 32x32 and the grey channel is copied to 3 channels
(:func:`~adaround_lightning.benchmarks.train_quickstart.quickstart_transform_tensor`, the same
preprocessing as ``conf/data/fashion_mnist.yaml``). Training uses a real ``lightning.Trainer``
on whatever accelerator is available (a few minutes on a GPU, tens on a CPU).

The checkpoints are not part of the repository: this script regenerates them into
``--out`` (default ``checkpoints/fashion_mnist/<arch>/``) as ``model.pt`` (a float32
``state_dict``) plus ``meta.json``. The ``fmnist_resnet18`` and ``fmnist_mobilenetv2`` recipes
read them from there.
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
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

from adaround_lightning.benchmarks.common import VIT_TINY_KWARGS
from adaround_lightning.benchmarks.train_quickstart import (
    QuickstartModule,
    _accuracy,
    quickstart_transform_tensor,
)
from adaround_lightning.data.idx import FASHION_MNIST_DEFAULT_ROOT, load_fashion_mnist

logger = logging.getLogger(__name__)

__all__ = ["ARCHS", "DEFAULT_CHECKPOINT_DIR", "main"]

#: Architectures and the training settings used for them (builder or class name, OneCycle
#: peak LR, epochs, optimizer). Transformers train with AdamW; the CNNs with SGD.
ARCHS: dict[str, dict[str, Any]] = {
    "resnet18": {"kwargs": {"num_classes": 10}, "max_lr": 0.1, "epochs": 3},
    "mobilenet_v2": {"kwargs": {"num_classes": 10}, "max_lr": 0.2, "epochs": 3},
    "vit_tiny": {
        "name": "VisionTransformer",
        "kwargs": {"num_classes": 10, **VIT_TINY_KWARGS},
        "max_lr": 2e-3,
        "epochs": 8,
        "optimizer": "adamw",
        "weight_decay": 0.05,
    },
    # timm's ResNet18 (zero-initialised last BN per block, its own module names).
    "timm_resnet18": {
        "name": "resnet18",
        "source": "timm",
        "kwargs": {"num_classes": 10},
        "max_lr": 0.1,
        "epochs": 3,
    },
}

#: Where checkpoints go by default (ignored by git).
DEFAULT_CHECKPOINT_DIR = Path("checkpoints") / "fashion_mnist"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a torchvision classifier on full Fashion-MNIST (32x32, 3 channels)."
    )
    parser.add_argument("--arch", choices=sorted(ARCHS), required=True)
    parser.add_argument(
        "--root", type=Path, default=FASHION_MNIST_DEFAULT_ROOT, help="Fashion-MNIST idx files"
    )
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default per arch)")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-lr", type=float, default=None, help="OneCycle peak LR")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train ``--arch`` and write ``model.pt`` and ``meta.json``.

    Args:
        argv: Command-line arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The metadata written to ``meta.json``.

    Example:
        >>> meta = main(["--arch", "resnet18", "--epochs", "1"])  # doctest: +SKIP
    """
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    preset = ARCHS[args.arch]
    epochs = args.epochs if args.epochs is not None else preset["epochs"]
    max_lr = args.max_lr if args.max_lr is not None else preset["max_lr"]
    out: Path = args.out if args.out is not None else DEFAULT_CHECKPOINT_DIR / args.arch
    arch = {
        "name": preset.get("name", args.arch),
        "kwargs": dict(preset["kwargs"]),
        "source": preset.get("source", "torchvision"),
    }
    optimizer = preset.get("optimizer", "sgd")

    t_start = time.perf_counter()
    L.seed_everything(args.seed, workers=True)
    train_x, train_y = load_fashion_mnist(args.root, "train")
    test_x, test_y = load_fashion_mnist(args.root, "test")
    train_loader = DataLoader(
        TensorDataset(torch.from_numpy(train_x), torch.from_numpy(train_y)),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    module = QuickstartModule(
        arch=arch,
        max_lr=max_lr,
        weight_decay=preset.get("weight_decay", 5e-5),
        optimizer=optimizer,
    )
    n_params = sum(p.numel() for p in module.model.parameters())
    logger.info("%s: %d parameters, %d epochs, max_lr %g", args.arch, n_params, epochs, max_lr)
    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        max_epochs=epochs,
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

    model = module.model.to("cpu").float().eval()
    accuracy = _accuracy(model, test_x, test_y)
    logger.info(
        "%s: test top-1 %.4f on 10k images, training %.0f s", args.arch, accuracy, fit_seconds
    )

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, out / "model.pt")
    meta: dict[str, Any] = {
        "arch": arch,
        "num_parameters": n_params,
        "dataset": "Fashion-MNIST (full train split, test on the full 10k test split)",
        "preprocessing": f"{quickstart_transform_tensor.__module__}.quickstart_transform_tensor",
        "training": {
            "epochs": epochs,
            "batch_size": args.batch_size,
            "optimizer": "AdamW" if optimizer == "adamw" else "SGD(momentum=0.9, nesterov=True)",
            "weight_decay": preset.get("weight_decay", 5e-5),
            "max_lr": max_lr,
            "schedule": "OneCycleLR(pct_start=0.25), per step",
            "augmentation": "random shift up to 2 px (zero fill) + horizontal flip",
        },
        "seed": args.seed,
        "test_accuracy_full": accuracy,
        "train_wall_seconds": round(fit_seconds, 1),
        "total_wall_seconds": round(time.perf_counter() - t_start, 1),
        "accelerator": str(trainer.strategy.root_device),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s", out / "model.pt")
    return meta


if __name__ == "__main__":
    main()

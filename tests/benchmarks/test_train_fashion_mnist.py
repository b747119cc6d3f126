"""The benchmark training script writes a checkpoint the plain torchvision model loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torchvision

from adaround_lightning.benchmarks.train_fashion_mnist import main
from adaround_lightning.benchmarks.train_quickstart import quickstart_transform_tensor
from tests.data.test_idx import _write_split


def test_one_epoch_writes_a_loadable_checkpoint_and_its_accuracy(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", 512, gz=True, seed=0)
    test_images, test_labels = _write_split(tmp_path, "t10k", 64, gz=True, seed=1)
    out = tmp_path / "out"
    meta = main(["--arch", "resnet18", "--root", str(tmp_path), "--epochs", "1", "--out", str(out)])
    model = torchvision.models.resnet18(num_classes=10)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))  # strict: every key
    with torch.no_grad():
        logits = model.eval()(quickstart_transform_tensor(torch.from_numpy(test_images)))
    accuracy = float(np.mean(logits.argmax(1).numpy() == test_labels))
    assert meta["test_accuracy_full"] == accuracy
    assert json.loads((out / "meta.json").read_text())["arch"]["name"] == "resnet18"


def test_the_vit_preset_trains_with_adamw_and_loads_into_torchvision_s_class(
    tmp_path: Path,
) -> None:
    from adaround_lightning.benchmarks.common import VIT_TINY_KWARGS, build_model

    _write_split(tmp_path, "train", 256, gz=True, seed=0)
    _write_split(tmp_path, "t10k", 32, gz=True, seed=1)
    out = tmp_path / "out"
    meta = main(["--arch", "vit_tiny", "--root", str(tmp_path), "--epochs", "1", "--out", str(out)])
    assert meta["arch"]["name"] == "VisionTransformer" and meta["training"]["optimizer"] == "AdamW"
    model = torchvision.models.VisionTransformer(num_classes=10, **VIT_TINY_KWARGS)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))  # strict: every key
    # The benchmark runners build the same network from the same file.
    rebuilt = build_model("vit_tiny", out / "model.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))

"""The CLI end to end on models from timm, Hugging Face folders and any class (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers.cli import run_cli

pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

FAST = [
    "adaround.iters=4",
    "adaround.num_samples=32",
    "data.calibration.size=32",
    "data.preprocess.resize=32",
    "data.preprocess.crop=32",
    "data.num_workers=0",
    "trainer.accelerator=cpu",
]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder tree: train/ and val/, two classes, 24 random 40 px RGB images each."""
    root = tmp_path_factory.mktemp("images")
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(24):
                pixels = torch.randint(0, 256, (40, 40, 3), generator=generator, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{index}.png")
    return root


def _run(args: list[str], cwd: Path) -> dict:
    proc = run_cli([*FAST, *args, f"hydra.run.dir={cwd / 'run'}"], cwd, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((cwd / "run" / "results.json").read_text())


def test_a_timm_model_from_the_command_line(image_folder: Path, tmp_path: Path) -> None:
    results = _run(
        [
            "recipe=custom",
            "model.source=timm",
            "model.name=efficientnet_b0",
            "model.num_classes=2",
            f"data.root={image_folder}",
        ],
        tmp_path,
    )
    assert results["finished"] and results["coverage"]["fraction"] == 1.0
    layers = results["layers"]
    assert sum(1 for layer in layers if layer.get("block")) > len(layers) // 2  # found blocks
    assert results["onnx"]["max_abs_logit_diff"] <= 1e-4 * max(
        1.0, results["onnx"]["max_abs_logit"]
    )
    assert results["grid_check"]["passed"]


def test_a_hugging_face_folder_and_a_safetensors_checkpoint(
    image_folder: Path, tmp_path: Path
) -> None:
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    model.save_pretrained(tmp_path / "vit")  # what a user's download or fine-tune leaves
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "weights.safetensors"))
    results = _run(
        [
            "recipe=custom",
            "model.source=hf",
            f"model.name={tmp_path / 'vit'}",
            "model.num_classes=2",
            f"model.checkpoint={tmp_path / 'weights.safetensors'}",
            f"data.root={image_folder}",
        ],
        tmp_path,
    )
    assert results["finished"] and results["coverage"]["fraction"] == 1.0
    assert sum(1 for layer in results["layers"] if layer.get("block")) >= 12  # 2 encoder layers


def test_any_class_by_its_dotted_path(image_folder: Path, tmp_path: Path) -> None:
    results = _run(
        [
            "recipe=custom",
            "model.source=target",
            "model.name=torchvision.models.resnet18",
            "model.num_classes=2",
            "++model.kwargs={num_classes: 2}",
            f"data.root={image_folder}",
        ],
        tmp_path,
    )
    assert results["finished"] and len(results["layers"]) == 21


def test_a_folder_of_unlabelled_images_without_evaluation(
    image_folder: Path, tmp_path: Path
) -> None:
    results = _run(
        [
            "recipe=custom",
            "data=images",
            f"data.root={image_folder / 'train'}",  # images in class folders, read as one set
            "model.name=resnet18",
            "model.num_classes=10",
        ],
        tmp_path,
    )
    assert results["finished"] and "fp32" not in results and results["eval_images"] == 0
    agreement = results["agreement"]
    assert 0.0 <= agreement["nearest"]["top1_agreement"] <= 100.0
    assert agreement["adaround"]["images"] == 32
    assert results["onnx"]["max_abs_logit_diff"] <= 1e-4 * max(
        1.0, results["onnx"]["max_abs_logit"]
    )
    assert results["grid_check"]["passed"]

"""The Hydra app: every recipe composes; run() and the command line end to end; bad inputs."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from adaround_lightning.app.cli import CONFIG_DIR, recipes
from adaround_lightning.app.run import run
from adaround_lightning.app.settings import run_config_from
from adaround_lightning.core.errors import UserError
from adaround_lightning.export import onnx_logits
from adaround_lightning.models.model_builder import ModelConfig, build_model
from adaround_lightning.torch_frontend.load_run import load_quantized
from tests.helpers.cli import run_cli

REPO = Path(__file__).resolve().parents[1]
FAST = [
    "adaround.iters=10",
    "adaround.num_samples=64",
    "data.calibration.size=64",
    "data.eval_size=300",
    "trainer.accelerator=cpu",
]


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides)


def _image_tree(root: Path, classes: int = 2, per_class: int = 3) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (40, 30), color=(c * 80, i * 40, 10)).save(folder / f"{i}.png")
    return root


def test_recipes_are_listed() -> None:
    assert set(RECIPES) <= set(recipes())


RECIPES = [
    "quickstart",
    "mobilenetv2",
    "resnet18",
    "resnet50",
    "custom",
    "fmnist_resnet18",
    "fmnist_mobilenetv2",
    "fmnist_vit_tiny",
    "vit_b_16",
]
#: Checkpoint folder of the fmnist_ recipes (train_fashion_mnist's --arch), where not the name.
_FMNIST_ARCH = {"VisionTransformer": "vit_tiny"}


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_and_instantiates(recipe: str, tmp_path: Path) -> None:
    cfg = _compose([f"recipe={recipe}", f"data.root={_image_tree(tmp_path)}"])
    settings = run_config_from(cfg)
    assert settings.name == recipe
    if recipe.startswith("fmnist_"):
        # Checkpoints made by train_fashion_mnist, evaluated on the full test split.
        name = settings.model.name
        assert (
            settings.model.checkpoint
            == f"checkpoints/fashion_mnist/{_FMNIST_ARCH.get(name, name)}/model.pt"
        )
        assert settings.data.source == "fashion_mnist" and settings.data.eval_size is None
        settings.model.checkpoint = None  # not made in tests: the architecture only
    elif recipe not in ("quickstart", "custom"):
        # The paper's settings, ImageNet layout, torchvision weights that exist.
        assert settings.quant.weight_bits == 4 and settings.adaround.iters == 10000
        assert settings.adaround.batch_size == 32 and settings.data.calibration.size == 1024
        assert settings.data.source == "imagenet" and settings.data.preprocess.crop == 224
        assert (
            settings.model.weights
            in torchvision.models.get_model_weights(settings.model.name).__members__
        )
        settings.model.weights = None  # no download in tests: the architecture only
    model = build_model(settings.model)
    size = 224 if settings.model.name.startswith("vit_") else 32  # ViT-B/16: its own size only
    assert model(torch.randn(1, 3, size, size)).shape == (1, settings.model.num_classes)


@pytest.mark.parametrize("group", ["data=fashion_mnist", "data=imagefolder", "data=imagenet"])
def test_every_data_option_composes(group: str, tmp_path: Path) -> None:
    cfg = _compose([group, f"data.root={tmp_path}"])
    assert run_config_from(cfg).data.root == str(tmp_path)


def test_offline_weights_name_the_checkpoint_option(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-torch-home")
    with pytest.raises(UserError, match=r"model\.checkpoint=PATH"):
        build_model(ModelConfig(name="resnet18", weights="IMAGENET1K_V1"))


def test_run_on_an_image_folder(tmp_path: Path) -> None:
    root = _image_tree(tmp_path / "data", classes=3, per_class=12)
    checkpoint = tmp_path / "net.pt"
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3)
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, checkpoint)
    cfg = _compose(
        [
            "recipe=custom",
            f"data.root={root}",
            "data.num_workers=0",
            "data.preprocess.resize=32",
            "data.preprocess.crop=32",
            "model.name=resnet18",
            "model.num_classes=3",
            f"model.checkpoint={checkpoint}",
            "adaround.iters=3",
            "adaround.batch_size=8",
            "trainer.accelerator=cpu",
            f"output_dir={tmp_path / 'out'}",
        ]
    )
    results = run(cfg)
    assert results["finished"] and len(results["layers"]) == 21
    assert set(results["fp32"]) == {"top1"}  # 3 classes: no top-5
    out = tmp_path / "out"
    assert (
        results["grid_check"]["passed"] and results["onnx"]["top1"] == results["adaround"]["top1"]
    )
    assert results["onnx"]["max_abs_logit_diff"] < 1e-3
    # load_quantized rebuilds the network from the files; onnxruntime agrees with it.
    rebuilt = load_quantized(out)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits = rebuilt(x).numpy()
    assert abs(onnx_logits(out / "model.onnx", x) - logits).max() < 1e-4
    state = torch.load(out / "quantized_model.pt", weights_only=True)
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_cli_quickstart_writes_results(tmp_path: Path) -> None:
    proc = run_cli([*FAST, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    for key in ("fp32", "nearest", "adaround"):
        assert 0 <= results[key]["top1"] <= 100 and results[key]["top5"] >= results[key]["top1"]
    assert results["recipe"] == "quickstart" and results["finished"] is True
    assert len(results["layers"]) == 29 and results["seconds"] > 0
    # Block-wise, a layer reports the steps of its block's joint fit: iters (10) per fit.
    assert {layer["iters"] for layer in results["layers"]} == {10}
    assert all(0 < layer["steps_run"] <= 10 for layer in results["layers"])
    for name in (
        "quantized_model.pt",
        "config.yaml",
        "quantized_weights.safetensors",
        "encodings.json",
        "model.onnx",
        "adaround_state.pt",
    ):
        assert (tmp_path / "run" / name).is_file(), name
    assert results["grid_check"]["passed"]
    assert results["onnx"]["top1"] == results["adaround"]["top1"]
    assert "AdaRound" in proc.stdout and "round-to-nearest" in proc.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["recipe=nosuch"], "unknown recipe"),
        (["recipe=resnet18"], "data.root"),
        (["data=imagefolder", "data.root=/nonexistent/folder"], "data.root"),
        (["data=imagefolder", "data.root=EMPTY"], "holds no images"),
        (["model.checkpoint=/nonexistent/model.pt"], "does not exist"),
        (["model.num_classes=7"], "does not fit"),
        (["quant.weight_bits=9"], "2 to 8"),
        (["quant.weight_bits=1"], "2 to 8"),
        (["adaround.batch_size=5000"], "fewer than one batch"),
    ],
)
def test_bad_inputs_give_one_line(args: list[str], expected: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    args = [a.replace("EMPTY", str(empty)) for a in args]
    proc = run_cli([*FAST, *args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]


def test_help_lists_the_recipes(tmp_path: Path) -> None:
    proc = run_cli(["--help"], cwd=tmp_path)
    assert proc.returncode == 0
    line = next(line for line in proc.stdout.splitlines() if line.startswith("recipe:"))
    for recipe in recipes():
        assert recipe in line


def test_the_nearest_row_says_it_has_no_bias_correction() -> None:
    # AdaRound's row has bias correction by default and the nearest row never does: the table
    # must not present them as the same treatment.
    from adaround_lightning.app.run import summary_table

    table = summary_table(
        {"fp32": {"top1": 90.0}, "nearest": {"top1": 50.0}, "adaround": {"top1": 85.0}}
    )
    nearest_row = next(line for line in table.splitlines() if line.startswith("round-to-nearest"))
    assert nearest_row.split()[-1] == "50.00"
    marker = nearest_row.split()[0][len("round-to-nearest") :]
    assert marker and f"{marker} weights only: no bias correction" in table

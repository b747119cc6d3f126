"""Bad input through the command line: one ``error:`` line naming the fix, exit 2, no outputs.

Every case here is listed in the table of bad inputs in docs/runs.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli import run_cli, run_cli_batch
from tests.onnx_frontend.helpers import small_cnn_onnx

FAST = ["adaround.iters=2", "data.eval_size=20", "export.onnx=false", "trainer.accelerator=cpu"]

#: (case id, overrides, a fragment of the error line). ``{tmp}`` is a prepared folder.
CASES: list[tuple[str, list[str], str]] = [
    ("weight-bits-low", ["quant.weight_bits=1"], "quant.weight_bits must be an integer from 2"),
    ("weight-bits-high", ["quant.weight_bits=9"], "quant.weight_bits must be an integer from 2"),
    ("act-bits", ["quant.act_bits=1"], "quant.act_bits must be an integer"),
    ("scale-method", ["quant.scale_method=p99"], "quant.scale_method must be one of"),
    ("act-observer", ["quant.act_observer=kl"], "quant.act_observer must be one of"),
    ("first-layer-bits", ["quant.first_layer_bits=12"], "quant.first_layer_bits must be"),
    ("layer-bits", ["quant.layer_bits={features.0.0:1}"], "quant.layer_bits['features.0.0']"),
    ("exclude-all", ["quant.exclude=[*]"], "no layer is left to quantize"),
    ("average-bits", ["quant.average_bits=-1"], "quant.average_bits must be a positive number"),
    ("candidate-bits", ["quant.candidate_bits=[1,4]"], "quant.candidate_bits[] must be an integer"),
    (
        "average-bits-too-low",
        ["quant.average_bits=1.5"],
        "quant.average_bits=1.5 allows 1.500 bits per weight on average, but 2 bits everywhere",
    ),
    (
        "max-size-too-low",
        ["quant.max_size_mb=0.05", "quant.last_layer_bits=8"],
        "quant.max_size_mb=0.05 allows",
    ),
    ("exclude-no-match", ["quant.exclude=[nosuch*]"], "quant.exclude pattern 'nosuch*' matches no"),
    (
        "layer-bits-no-match",
        ["quant.layer_bits={nosuch*: 4}"],
        "quant.layer_bits pattern 'nosuch*' matches no layer of the model; the 29 layers",
    ),
    (
        "run-dir-under-a-file",
        ["hydra.run.dir={tmp}/text.pt/run"],
        "cannot be created ({tmp}/text.pt is a file): pass another hydra.run.dir=DIR",
    ),
    (
        "output-dir-under-a-file",
        ["output_dir={tmp}/text.pt/out"],
        "cannot be created ({tmp}/text.pt is a file): pass another output_dir=DIR",
    ),
    (
        "image-size",  # a ViT built for 64 px images; the embedded data is 32 px
        [
            "recipe=fmnist_vit_tiny",
            "data=embedded",
            "model.checkpoint=null",
            "model.kwargs.image_size=64",
        ],
        "Expected 64 but got 32!); it expects 64 px images: set data.preprocess.resize",
    ),
    ("granularity", ["adaround.granularity=net"], "adaround.granularity must be one of"),
    ("reconstruction", ["adaround.reconstruction=sum"], "adaround.reconstruction must be one"),
    ("iters", ["adaround.iters=0"], "adaround.iters must be a positive integer"),
    ("batch-size", ["adaround.batch_size=0"], "adaround.batch_size must be a positive"),
    ("lr", ["adaround.lr=-1"], "adaround.lr must be > 0"),
    ("warm-start", ["adaround.warm_start=1.5"], "adaround.warm_start must be in"),
    ("drop-prob", ["adaround.drop_prob=1.0"], "adaround.drop_prob must be in"),
    ("export-target", ["export.target=tflite"], "export.target must be one of"),
    ("export-container", ["export.container=int2"], "export.container must be one of"),
    (
        "group-size-opset",
        ["quant.group_size=32", "export.opset=20", "export.onnx=true"],
        "quant.group_size needs block-wise DequantizeLinear, opset 21 or newer",
    ),
    (
        "tensorrt-act-bits",
        ["export.target=tensorrt", "quant.act_bits=4", "quant.act_symmetric=true"],
        "TensorRT quantizes activations to 8 bits only, not quant.act_bits=4",
    ),
    (
        "tensorrt-asymmetric",
        ["export.target=tensorrt", "quant.act_bits=8"],
        "add quant.act_symmetric=true",
    ),
    ("cache-device", ["engine.cache_device=gpu"], "engine.cache_device must be one of"),
    ("cache-budget", ["engine.cache_budget_gb=-1"], "engine.cache_budget_gb must be > 0"),
    ("cache-dtype", ["engine.cache_dtype=int8"], "engine.cache_dtype must be one of"),
    ("block-iters", ["adaround.block_iters=0"], "adaround.block_iters must be a positive"),
    ("refine-bits", ["adaround.refine_bits=[1]"], "adaround.refine_bits must be a list of bit"),
    ("channels-last", ["engine.channels_last=maybe"], "engine.channels_last=maybe: Value"),
    ("blocks-no-match", ["adaround.blocks=[NoSuchBlock]"], "adaround.blocks pattern 'NoSuchBlock'"),
    (
        "fewer-than-a-batch",
        ["adaround.batch_size=64", "data.calibration.size=32", "adaround.num_samples=32"],
        "fewer than one batch",
    ),
    ("opset", ["export.opset=11"], "export.opset must be >= 13"),
    ("model-name", ["model.name=not_a_model"], "is not a torchvision classification model"),
    ("model-source", ["model.source=keras"], "model.source must be one of torchvision, timm"),
    ("timm-name", ["model.source=timm", "model.name=not_a_model"], "is not a timm model"),
    (
        "target-name",
        ["model.source=target", "model.name=nosuch.Net"],
        "model.name=nosuch.Net is not importable",
    ),
    ("hf-folder", ["model.source=hf", "model.name={tmp}/none"], "is not a Hugging Face image"),
    ("model-weights", ["model.weights=NOPE"], "is not a weight of mobilenet_v2"),
    ("checkpoint-missing", ["model.checkpoint={tmp}/none.pt"], "does not exist"),
    ("checkpoint-not-torch", ["model.checkpoint={tmp}/text.pt"], "not a readable torch"),
    ("num-classes", ["model.num_classes=0"], "model.num_classes must be a positive"),
    ("data-source", ["data.source=s3"], "data.source must be one of embedded"),
    ("data-root-unset", ["data.source=imagefolder"], "data.root is not set"),
    ("data-root-missing", ["data.source=imagefolder", "data.root={tmp}/none"], "not a folder"),
    ("eval-size", ["data.eval_size=0"], "data.eval_size must be positive"),
    ("data-batch-size", ["data.batch_size=0"], "data.batch_size must be >= 1"),
    ("calibration-size", ["data.calibration.size=0"], "data.calibration.size must be"),
    (
        "mean-channels",
        ["data.preprocess.mean=[0.1,0.2]", "data.preprocess.std=[0.3,0.4]"],
        "have 2 values but the images have 1 channel: give 1 value each",
    ),
    (
        "image-sizes",
        [
            "data.source=imagefolder",
            "data.root={tmp}/mixed",
            "data.preprocess.resize=null",
            "data.preprocess.crop=null",
            "data.num_workers=0",
        ],
        "different sizes after preprocessing",
    ),
    ("resume-not-a-run", ["resume={tmp}/none"], "is not a run dir"),
    ("accelerator", ["trainer.accelerator=gpu"], "the trainer settings do not fit this machine"),
    ("strategy", ["trainer.strategy=ddp_spawn"], "use trainer.strategy=ddp"),
    ("seed", ["seed=abc"], "seed=abc: Value 'abc' of type"),
    ("setting-type", ["adaround.iters=many"], "could not be converted to Integer"),
    ("setting-unknown", ["adaround.itres=100"], "unknown setting adaround.itres"),
    ("setting-moved", ["adaround.stream=false"], "adaround.stream is now engine.stream"),
    ("recipe", ["recipe=not_a_recipe"], "unknown recipe 'not_a_recipe'"),
    ("onnx-missing", ["model.onnx={tmp}/none.onnx"], "none.onnx: no such file"),
    ("onnx-not-onnx", ["model.onnx={tmp}/text.pt"], "is not an ONNX model"),
    (
        "onnx-act-in-loop",
        ["model.onnx={tmp}/small_cnn.onnx", "quant.act_bits=8", "adaround.act_in_loop=true"],
        "adaround.act_in_loop needs the graph in PyTorch",
    ),
    ("lm-no-text", ["recipe=causal_lm", "model.name={tmp}"], "data.source=text needs data.text"),
    (
        "lm-text-missing",
        ["recipe=causal_lm", "model.name={tmp}", "data.text={tmp}/none.txt"],
        "data.text={tmp}/none.txt is not a file",
    ),
    (
        "lm-not-a-model",
        ["recipe=causal_lm", "model.name={tmp}/mixed", "data.text={tmp}/text.pt"],
        "is not a Hugging Face causal language model",
    ),
    ("lm-task-source", ["model.task=causal_lm"], "model.task=causal_lm needs model.source=hf"),
    (
        "asymmetric-onnx",
        ["quant.weight_symmetric=false"],
        "quant.weight_symmetric=false is exported as compressed-tensors",
    ),
    (
        "onnx-input-shape",  # exported for 8 px inputs; the data is 32 px
        ["model.onnx={tmp}/small_cnn.onnx", "model.num_classes=10"],
        "onnxruntime cannot run the model on inputs of shape",
    ),
]


def _prepare(folder: Path) -> None:
    from PIL import Image

    (folder / "text.pt").write_text("not a checkpoint")
    small_cnn_onnx(folder, image_size=8, num_classes=10)
    for split in ("train", "val"):
        for index, size in enumerate((8, 12, 16)):
            image_dir = folder / "mixed" / split / f"class{index % 2}"
            image_dir.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (size, size)).save(image_dir / f"{index}.png")


#: Cases also run as a cold ``python -m adaround_lightning`` start (the others run forked from
#: one warm interpreter, :func:`~tests.helpers.cli.run_cli_batch`): both must say the same.
COLD = ("weight-bits-low", "setting-unknown", "onnx-missing")


def _args(root: Path, name: str, overrides: list[str]) -> list[str]:
    args = [*FAST, *(o.replace("{tmp}", str(root)) for o in overrides)]
    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        args.append(f"hydra.run.dir={root / 'runs' / name}")
    return args


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, Path]]:
    root = tmp_path_factory.mktemp("bad")
    _prepare(root)
    cases = [(name, _args(root, name, overrides), root) for name, overrides, _ in CASES]
    done = run_cli_batch(cases, root / "batch")
    return {name: (*done[name], root / "runs" / name) for name, _, _ in CASES}


@pytest.mark.parametrize("name", COLD)
def test_a_cold_start_says_what_the_batch_says(
    outcomes: dict[str, tuple[int, str, Path]], name: str, tmp_path: Path
) -> None:
    overrides = next(o for n, o, _ in CASES if n == name)
    root = outcomes[name][2].parents[1]
    args = _args(root, name, overrides)
    args[-1] = f"hydra.run.dir={tmp_path / name}"  # the batch's run dir stays as it left it
    cold = run_cli(args, root, timeout=300)
    error = [line for line in cold.stderr.splitlines() if line.startswith("error:")]
    batch = [line for line in outcomes[name][1].splitlines() if line.startswith("error:")]
    assert cold.returncode == outcomes[name][0] == 2
    assert error == batch and len(error) == 1


def test_at_least_25_distinct_cases() -> None:
    assert len({name for name, _, _ in CASES}) == len(CASES) >= 25


@pytest.mark.parametrize(("name", "overrides", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_error_line_and_exit_2(
    outcomes: dict[str, tuple[int, str, Path]], name: str, overrides: list[str], fragment: str
) -> None:
    returncode, stderr, run_dir = outcomes[name]
    fragment = fragment.replace("{tmp}", str(run_dir.parents[1]))
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert returncode == 2, stderr[-1500:]
    assert len(error_lines) == 1 and fragment in error_lines[0], stderr[-1500:]
    assert "Traceback" not in stderr
    written = {p.name for p in run_dir.rglob("*") if p.is_file()} if run_dir.exists() else set()
    assert not written & {"quantized_model.pt", "quantized_weights.safetensors", "model.onnx"}
    assert not [n for n in written if n.startswith(".") and ".tmp" in n]
    if name == "resume-not-a-run":  # a mistyped resume path is not turned into a run dir
        assert not (run_dir.parents[1] / "none").exists()

"""Mixed precision through the app: the budget holds, and every file carries the chosen bits."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from adaround_lightning.app.cli import CONFIG_DIR
from adaround_lightning.app.run import run

FAST = [
    "adaround.iters=5",
    "adaround.num_samples=64",
    "data.calibration.size=64",
    "data.eval_size=100",
    "trainer.accelerator=cpu",
]


def _run(overrides: list[str], out: Path) -> dict:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", [*FAST, *overrides, f"output_dir={out}"])
    return run(cfg)


def test_average_bits_budget_reaches_results_encodings_and_onnx(tmp_path: Path) -> None:
    results = _run(["quant.average_bits=2.5", "quant.last_layer_bits=8"], tmp_path)
    allocation = results["bit_allocation"]
    layers = {layer["name"]: layer for layer in results["layers"]}
    assert allocation["bits"] == {name: layer["bits"] for name, layer in layers.items()}
    # Recomputed from the layer shapes: the mean over all quantized weight elements.
    elements = {name: _numel(layer["weight_shape"]) for name, layer in layers.items()}
    average = sum(elements[n] * b for n, b in allocation["bits"].items()) / sum(elements.values())
    assert average == pytest.approx(allocation["average_bits"]) and average <= 2.5
    assert len(set(allocation["bits"].values())) >= 2  # mixed, not uniform
    last = results["layers"][-1]["name"]
    assert allocation["bits"][last] == 8 and last in allocation["fixed"]
    encodings = json.loads((tmp_path / "encodings.json").read_text())["param_encodings"]
    for name, bits in allocation["bits"].items():
        assert {entry["bitwidth"] for entry in encodings[f"{name}.weight"]} == {bits}
    # The ONNX file stores every layer at its bits: 4-bit containers up to 4 bits.
    assert results["grid_check"]["passed"]
    counts = Counter("INT4" if b <= 4 else "INT8" for b in allocation["bits"].values())
    assert results["grid_check"]["onnx_containers"] == dict(counts)


def test_size_budget_is_met(tmp_path: Path) -> None:
    results = _run(["quant.max_size_mb=0.1", "export.onnx=false"], tmp_path)
    allocation = results["bit_allocation"]
    assert allocation["size_bytes"] <= 0.1e6
    assert allocation["uniform_size_bytes"]["2"] <= 0.1e6 < allocation["uniform_size_bytes"]["3"]


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count

"""The app's ONNX path (``model.onnx=PATH``): the same outputs as a PyTorch run, ONNX-keyed."""

from __future__ import annotations

import json

import onnx
import pytest
from hydra import compose, initialize_config_dir

from adaround_lightning.app.cli import CONFIG_DIR
from adaround_lightning.app.run import run
from tests.onnx_frontend.helpers import small_cnn_onnx

FAST = [
    "adaround.iters=8",
    "adaround.num_samples=64",
    "data.calibration.size=64",
    "data.eval_size=100",
    "trainer.accelerator=cpu",
    "model.num_classes=10",
]


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_app")
    path = small_cnn_onnx(folder, image_size=32, num_classes=10)
    overrides = [*FAST, f"model.onnx={path}", f"output_dir={folder / 'run'}"]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        results = run(compose("config", overrides))
    return results, folder / "run", path


def test_a_run_writes_the_outputs_of_a_torch_run(onnx_run) -> None:
    results, run_dir, _ = onnx_run
    assert results["finished"] and results["source"] == "onnx"
    assert results["grid_check"]["passed"] and results["grid_check"]["layers"] == 4
    assert results["onnx"]["max_abs_logit_diff"] <= 1e-4 * max(
        1.0, results["onnx"]["max_abs_logit"]
    )
    assert results["adaround"]["top1"] == results["onnx"]["top1"]
    assert results["coverage"]["fraction"] == 1.0 and results["quant"]["granularity"] == "layer"
    for name in ("model.onnx", "encodings.json", "report.html", "onnx_layers.json"):
        assert (run_dir / name).is_file(), name
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk["layers"] == results["layers"] and len(on_disk["layers"]) == 4


def test_the_output_graph_runs_and_keeps_the_input_names(onnx_run) -> None:
    _, run_dir, path = onnx_run
    original, quantized = onnx.load(str(path)), onnx.load(str(run_dir / "model.onnx"))
    assert [i.name for i in quantized.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in quantized.graph.output] == [o.name for o in original.graph.output]
    assert {n.name for n in original.graph.node} <= {n.name for n in quantized.graph.node}


def test_load_quantized_points_to_the_onnx_file(onnx_run) -> None:
    from adaround_lightning.core.errors import UserError
    from adaround_lightning.torch_frontend.load_run import load_quantized

    _, run_dir, _ = onnx_run
    with pytest.raises(UserError, match="a run of the ONNX path"):
        load_quantized(run_dir)


def test_the_grid_check_command_reads_an_onnx_run(onnx_run) -> None:
    from adaround_lightning.export.grid_check import verify_grid

    _, run_dir, _ = onnx_run
    assert verify_grid(run_dir)["passed"]  # parity read from results.json this time

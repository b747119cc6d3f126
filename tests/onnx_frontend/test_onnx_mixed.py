"""Mixed precision on an ONNX graph: measured errors, the budget, the bits in the files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from adaround_lightning import AdaroundConfig, QuantConfig
from adaround_lightning.api import adaround_onnx
from adaround_lightning.export import ExportConfig, export_run, verify_grid
from adaround_lightning.onnx_frontend.onnx_mixed import output_error
from tests.onnx_frontend.helpers import small_cnn_onnx


def test_output_error_is_twice_the_kl_of_the_prediction() -> None:
    rng = np.random.default_rng(0)
    reference, moved = rng.normal(size=(32, 5)), rng.normal(size=(32, 5))
    kl = F.kl_div(
        F.log_softmax(torch.from_numpy(moved), 1),
        F.log_softmax(torch.from_numpy(reference), 1),
        log_target=True,
        reduction="batchmean",
    )
    assert abs(output_error(reference, moved) - 2 * float(kl)) < 1e-12
    # Any other output: the squared error summed over elements, averaged over samples.
    a, b = rng.normal(size=(8, 3, 4)), rng.normal(size=(8, 3, 4))
    assert abs(output_error(a, b) - ((a - b) ** 2).sum() / 8) < 1e-12


def test_onnx_budget_is_met_and_written(tmp_path: Path) -> None:
    model = small_cnn_onnx(tmp_path, image_size=8, num_classes=10)
    images = torch.randn(64, 3, 8, 8)
    result = adaround_onnx(
        model,
        images,
        QuantConfig(average_bits=3.0, candidate_bits=[2, 4, 8]),
        AdaroundConfig(iters=4, batch_size=16, granularity="layer"),
        {"accelerator": "cpu"},
        progress=False,
    )
    allocation = result.bit_allocation
    assert allocation is not None and allocation.average_bits <= 3.0
    assert {r.name: r.bits for r in result.layers} == allocation.bits
    assert all(allocation.errors[n][2] >= allocation.errors[n][8] for n in allocation.errors)
    assert result.footprint["average_bits"] == allocation.average_bits
    export_run(result, tmp_path / "run", images[:2], ExportConfig(onnx=True))
    assert verify_grid(tmp_path / "run")["passed"]

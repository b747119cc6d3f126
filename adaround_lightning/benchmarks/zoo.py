"""The torchvision zoo end to end: coverage, blocks, int8 ONNX parity, one JSON line per model.

Run as::

    python -m adaround_lightning.benchmarks.zoo [vit_b_16 swin_t ...]

Random-init models at a small input (the numbers are about coverage and export, not accuracy),
16 random images, ``adaround()`` with ``iters=1`` (W4 per-channel, the default block-wise fit with
bias correction), exported with ONNX, run by onnxruntime on 2 fresh inputs, ``verify_grid`` on
the files. Prints one JSON line per model (BENCHMARKS.md, "The torchvision zoo").

With ``--onnx``, the ONNX path instead: each model exported to float ONNX, calibrated by
``adaround_onnx`` (``iters=1``), written back as QDQ, the written graph's logits against the
calibration's simulation, ``verify_grid`` on the run files (BENCHMARKS.md, issue #22).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

from adaround_lightning import AdaroundConfig, QuantConfig
from adaround_lightning.benchmarks.common import one_iteration_adaround
from adaround_lightning.export import ExportConfig, export_run, onnx_logits, verify_grid

__all__ = ["ZOO", "main", "onnx_zoo_row", "zoo_row"]

#: Model -> (builder kwargs, input size): small inputs, except MaxViT's partitions need 224 px.
ZOO: dict[str, tuple[dict[str, Any], int]] = {
    "vit_b_16": ({"image_size": 32}, 32),
    "swin_t": ({}, 32),
    "convnext_tiny": ({}, 32),
    "maxvit_t": ({}, 224),
    "densenet121": ({}, 32),
    "resnet50": ({}, 32),
    "mobilenet_v3_large": ({}, 32),
    "efficientnet_b0": ({}, 32),
}


def _zoo_model(name: str) -> tuple[nn.Module, int]:
    """A seeded random-init model of :data:`ZOO` and its input size."""
    kwargs, size = ZOO[name]
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, **kwargs).eval()
    if name.startswith("vit_"):  # torchvision starts the head at zero: give it logits
        nn.init.normal_(model.heads.head.weight, std=0.02)
    return model, size


def zoo_row(name: str, out_dir: Path) -> dict[str, Any]:
    """Calibrate, export and check one model of :data:`ZOO`; its JSON-line fields.

    Example:
        >>> zoo_row("resnet50", Path("/tmp/zoo"))["coverage"]  # doctest: +SKIP
        1.0
    """
    model, size = _zoo_model(name)
    images = torch.randn(16, 3, size, size)
    started = time.perf_counter()
    result = one_iteration_adaround(model, images, QuantConfig(weight_bits=4))
    walk_seconds = time.perf_counter() - started
    export_run(result, out_dir, images[:2], ExportConfig(onnx=True))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        reference = result.model(x).numpy()
    assert result.coverage is not None and result.cache is not None
    return {
        "model": name,
        "size": size,
        "coverage": result.coverage.fraction,
        "left_in_float": list(result.coverage.left_in_float),
        "layers": len(result.layers),
        "in_blocks": sum(1 for layer in result.layers if layer.block is not None),
        "walk_s": round(walk_seconds, 1),
        "onnx_gap": float(np.abs(onnx_logits(out_dir / "model.onnx", x) - reference).max()),
        "max_logit": float(np.abs(reference).max()),
        "verify": verify_grid(out_dir)["passed"],
        "full_passes": result.cache.full_network_passes,
        "restarts": result.cache.restarts,
    }


def onnx_zoo_row(name: str, out_dir: Path) -> dict[str, Any]:
    """The ONNX path on one model of :data:`ZOO`: coverage, QDQ-vs-simulation gap, grid check."""
    from adaround_lightning import adaround_onnx
    from adaround_lightning.export.onnx import export_float_onnx
    from adaround_lightning.onnx_frontend.onnx_sampler import ort_session

    model, size = _zoo_model(name)
    path = out_dir / "float.onnx"
    export_float_onnx(model, torch.randn(2, 3, size, size), path)
    images = torch.randn(16, 3, size, size)
    started = time.perf_counter()
    result = adaround_onnx(
        path,
        images,
        QuantConfig(weight_bits=4),
        AdaroundConfig(iters=1, batch_size=8, granularity="layer"),
        {"accelerator": "cpu"},
        progress=False,
    )
    seconds = time.perf_counter() - started
    result.save(out_dir)
    x = torch.randn(2, 3, size, size).numpy()
    session = ort_session((out_dir / "model.onnx").read_bytes())
    written = session.run(None, {session.get_inputs()[0].name: x})[0]
    (simulated,) = result.sampler.run(x, [result.graph.output_name], result.values)
    initializers = result.graph.initializers
    weights = [n.weight for n in result.graph.layers]
    total = sum(initializers[w].size for w in weights)
    quantized = sum(initializers[result.layer(n).weight].size for n in result.quantizers)
    return {
        "model": name,
        "size": size,
        "layers": len(result.quantizers),
        "left_in_float": result.left_in_float,
        "coverage": quantized / total if total else 1.0,
        "calibration_s": round(seconds, 1),
        "qdq_vs_simulation": float(np.abs(written - simulated).max()),
        "max_logit": float(np.abs(simulated).max()),
        "verify": verify_grid(out_dir)["passed"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Print one JSON line per model named (default: all of :data:`ZOO`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=f"some of {', '.join(ZOO)} (default: all)")
    parser.add_argument("--onnx", action="store_true", help="the ONNX path (issue #22)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(ZOO))
    if unknown:
        parser.error(f"unknown models {', '.join(unknown)}: choose from {', '.join(ZOO)}")
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    for name in args.models or ZOO:
        with tempfile.TemporaryDirectory(prefix=f"zoo_{name}_") as tmp:
            row = onnx_zoo_row(name, Path(tmp)) if args.onnx else zoo_row(name, Path(tmp))
            sys.stdout.write(json.dumps(row) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

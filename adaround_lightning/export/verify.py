"""The grid check: every exported integer against AdaRound's rounding rule and the other files.

``python -m adaround_lightning.verify RUN_DIR`` runs it on a finished run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaround_lightning.export.integers import (
    GridCheckError,
    load_input_quantizers,
    load_quantized_weights,
)
from adaround_lightning.export.onnx import onnx_integers
from adaround_lightning.export.run_dir import (
    ENCODINGS_FILE,
    MODEL_FILE,
    ONNX_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
)

__all__ = ["verify_grid"]


def verify_grid(run_dir: Path) -> dict[str, Any]:
    """Check every exported integer against AdaRound's rounding rule and the other files.

    Checks, per quantized layer: ``q == clamp(floor(W/s) + 1[V >= 0], q_min, q_max)`` with ``V``
    and ``floor(W/s)`` from ``adaround_state.pt``; the scales agree; ``quantized_model.pt`` holds
    exactly ``s * q``; ``model.onnx`` (if present) stores the same int8 integers; the
    encodings (if present) hold the same scales.

    Returns:
        ``{"layers": n, "weights": count, "passed": True}``.

    Raises:
        GridCheckError: Naming the first layer and file that disagree.
    """
    run_dir = Path(run_dir)
    layers = load_quantized_weights(run_dir / WEIGHTS_FILE)
    states = torch.load(run_dir / STATE_FILE, map_location="cpu", weights_only=True)
    model_state = torch.load(run_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    onnx_path = run_dir / ONNX_FILE
    onnx_q = onnx_integers(onnx_path) if onnx_path.is_file() else None
    encodings_path = run_dir / ENCODINGS_FILE
    encodings = json.loads(encodings_path.read_text()) if encodings_path.is_file() else None
    count = 0
    if set(states) != {layer.name for layer in layers}:
        raise GridCheckError(f"{STATE_FILE} and {WEIGHTS_FILE} list different layers")
    for layer in layers:
        state = states[layer.name]
        expected = torch.clamp(
            state["weight_floor"] + (state["V"] >= 0).to(state["weight_floor"].dtype),
            state["quant_min"],
            state["quant_max"],
        ).to(torch.int8)
        bad = int((expected != layer.q).sum())
        if bad:
            raise GridCheckError(
                f"{layer.name}: {bad} integers differ from clamp(floor(W/s) + 1[V>=0]) "
                f"in {WEIGHTS_FILE}"
            )
        if not torch.equal(state["scale"].flatten().float(), layer.scale.flatten()):
            raise GridCheckError(
                f"{layer.name}: scales differ between {STATE_FILE} and {WEIGHTS_FILE}"
            )
        weight = model_state.get(f"{layer.name}.weight")
        if weight is None or not torch.equal(weight.float(), layer.dequantized()):
            raise GridCheckError(f"{layer.name}: {MODEL_FILE} does not hold exactly s * q")
        if onnx_q is not None and not np.array_equal(onnx_q.get(layer.name), layer.q.numpy()):
            raise GridCheckError(f"{layer.name}: {ONNX_FILE} stores different integers")
        if encodings is not None:
            scales = [e["scale"] for e in encodings["param_encodings"][f"{layer.name}.weight"]]
            if not np.allclose(scales, layer.scale.reshape(-1).double().numpy(), rtol=0, atol=0):
                raise GridCheckError(f"{layer.name}: {ENCODINGS_FILE} has different scales")
        count += layer.q.numel()
    input_quantizers = load_input_quantizers(run_dir / WEIGHTS_FILE)
    for name, quantizer in input_quantizers.items():
        if name not in states:
            raise GridCheckError(f"{name}: an activation grid for a layer that is not quantized")
        if encodings is not None:
            entry = encodings["activation_encodings"].get(name, {}).get("input", {}).get("0")
            if (
                entry is None
                or entry["scale"] != float(quantizer.scale)
                or entry["offset"] != -int(quantizer.zero_point)
            ):
                raise GridCheckError(f"{name}: {ENCODINGS_FILE} has a different input grid")
    return {
        "layers": len(layers),
        "weights": count,
        "activation_grids": len(input_quantizers),
        "passed": True,
    }

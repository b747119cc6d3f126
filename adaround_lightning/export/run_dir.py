"""The files of a run dir and :func:`export_run`, which writes them (each atomically).

* ``quantized_model.pt``: the calibrated network's state_dict (BN folded, weights ``s * q``);
* ``quantized_weights.safetensors``: the integers and grids (:mod:`.integers`);
* ``encodings.json``: AIMET's encodings (:mod:`.encodings`);
* ``adaround_state.pt``: ``V``, ``floor(W/s)``, scales and ranges for the grid check;
* ``float_weights.safetensors``: the float (BN-folded) weight ``W`` of every quantized layer, so
  the grid check recomputes ``floor(W/s)`` itself;
* ``model.onnx``: int8 weights behind ``DequantizeLinear`` (:mod:`.onnx`), with ``export.onnx``.

:func:`~adaround_lightning.export.grid_check.verify_grid` checks that every exported integer equals
``clamp(floor(W/s) + 1[V >= 0], q_min, q_max)`` for the float ``W`` and the learned ``V``, that
the float weights of ``quantized_model.pt`` are exactly ``s * q`` and that ONNX and encodings
carry the same integers, scales, zero points, axes and ranges.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adaround_lightning.core.atomic import atomic_torch_save, atomic_write, atomic_write_text
from adaround_lightning.core.errors import UserError
from adaround_lightning.engine.records.results import AdaroundResult
from adaround_lightning.export.encodings import aimet_encodings
from adaround_lightning.export.integers import (
    quantized_layers,
    quantizer_states,
    save_quantized_weights,
)
from adaround_lightning.export.onnx import export_onnx

__all__ = [
    "ENCODINGS_FILE",
    "FLOAT_WEIGHTS_FILE",
    "MODEL_FILE",
    "ONNX_FILE",
    "ONNX_LAYERS_FILE",
    "STATE_FILE",
    "WEIGHTS_FILE",
    "ExportConfig",
    "export_run",
]

WEIGHTS_FILE = "quantized_weights.safetensors"
ENCODINGS_FILE = "encodings.json"
ONNX_FILE = "model.onnx"
STATE_FILE = "adaround_state.pt"
MODEL_FILE = "quantized_model.pt"
FLOAT_WEIGHTS_FILE = "float_weights.safetensors"
#: ONNX-path runs: per layer, its op and the tensor names of its weight, bias and input.
ONNX_LAYERS_FILE = "onnx_layers.json"


@dataclass
class ExportConfig:
    """What a run exports besides ``quantized_model.pt``.

    Attributes:
        onnx: Write ``model.onnx`` (int8 weights through ``DequantizeLinear``) and evaluate it
            with onnxruntime.
        opset: ONNX opset (13 or newer: per-axis ``DequantizeLinear``).
        verify: Run the grid check on the written files at the end of the run.
    """

    onnx: bool = True
    opset: int = 17
    verify: bool = True

    def __post_init__(self) -> None:
        if self.opset < 13:
            raise UserError(
                f"export.opset must be >= 13 (per-axis DequantizeLinear), got {self.opset}"
            )


def _save_float_weights(result: AdaroundResult, path: str) -> None:
    from safetensors.torch import save_file

    float_model = result.float_model
    weights = {
        f"{name}.weight": float_model.get_submodule(name).weight.detach().cpu().contiguous()
        for name in result.quantizers
    }
    save_file(weights, path)


def export_run(
    result: AdaroundResult, out_dir: Path, example_input: torch.Tensor, config: ExportConfig
) -> dict[str, Any]:
    """Write the quantized model and its integer forms to ``out_dir`` (each file atomically).

    Returns:
        ``{"outputs": {kind: file name}}`` for ``results.json``.
    """
    layers = quantized_layers(result.quantizers)
    outputs = {"config": "config.yaml", "quantized_model": MODEL_FILE}
    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    atomic_torch_save(out_dir / MODEL_FILE, state)
    atomic_write(
        out_dir / WEIGHTS_FILE,
        lambda tmp: save_quantized_weights(Path(tmp), layers, result.act_quantizers),
    )
    outputs["quantized_weights"] = WEIGHTS_FILE
    encodings = aimet_encodings(layers, result.act_quantizers)
    atomic_write_text(out_dir / ENCODINGS_FILE, json.dumps(encodings, indent=1))
    outputs["encodings"] = ENCODINGS_FILE
    atomic_torch_save(out_dir / STATE_FILE, quantizer_states(result.quantizers))
    outputs["adaround_state"] = STATE_FILE
    atomic_write(out_dir / FLOAT_WEIGHTS_FILE, lambda tmp: _save_float_weights(result, tmp))
    outputs["float_weights"] = FLOAT_WEIGHTS_FILE
    if config.onnx:
        model = copy.deepcopy(result.model).cpu()
        atomic_write(
            out_dir / ONNX_FILE,
            lambda tmp: export_onnx(model, layers, example_input, Path(tmp), config.opset),
        )
        outputs["onnx"] = ONNX_FILE
    return {"outputs": outputs}

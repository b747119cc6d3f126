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

import json
import logging
from pathlib import Path
from typing import Any

import torch

from adaround_lightning.core.atomic import atomic_torch_save, atomic_write, atomic_write_text
from adaround_lightning.engine.records.results import CalibrationResult
from adaround_lightning.export.export_config import ExportConfig, ExportTarget
from adaround_lightning.export.integers import (
    quantized_layers,
    quantizer_states,
    save_quantized_weights,
)
from adaround_lightning.export.qnn import write_qnn_files

__all__ = [
    "ENCODINGS_FILE",
    "FLOAT_WEIGHTS_FILE",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "ONNX_FILE",
    "ONNX_LAYERS_FILE",
    "RESULTS_FILE",
    "STATE_FILE",
    "WEIGHTS_FILE",
    "ExportConfig",
    "SavesRunFiles",
    "export_run",
    "save_float_weights",
    "save_run_files",
]

WEIGHTS_FILE = "quantized_weights.safetensors"
ENCODINGS_FILE = "encodings.json"
ONNX_FILE = "model.onnx"
STATE_FILE = "adaround_state.pt"
MODEL_FILE = "quantized_model.pt"
FLOAT_WEIGHTS_FILE = "float_weights.safetensors"

log = logging.getLogger(__name__)

#: Written last by a CLI run: a run dir is finished when this file says so.
RESULTS_FILE = "results.json"
#: ``result.save``: what rebuilding the network needs besides the weights (the input shape).
MANIFEST_FILE = "manifest.json"
#: ONNX-path runs: per layer, its op and the tensor names of its weight, bias and input.
ONNX_LAYERS_FILE = "onnx_layers.json"


def save_float_weights(path: Path, weights: dict[str, torch.Tensor]) -> None:
    """``float_weights.safetensors``: the float ``W`` of every quantized layer (PyTorch layout)."""
    from safetensors.torch import save_file

    save_file({name: weight.contiguous() for name, weight in weights.items()}, str(path))


def save_run_files(
    result: CalibrationResult,
    out_dir: Path,
    example_input: torch.Tensor | None,
    config: ExportConfig,
) -> dict[str, str]:
    """Write a calibration's files to ``out_dir``, each atomically: the same for every front end.

    The integers, AIMET encodings, the quantizer states and the float weights are written here;
    the quantized model's own files by the result (``result.write_model_files``).

    Returns:
        ``{kind: file name}`` for ``results.json``'s ``outputs``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = quantized_layers(result.quantizers)
    # The integers of every layer, computed once for every file.
    outputs = result.write_model_files(out_dir, example_input, config, layers)
    if config.target == ExportTarget.QNN and "onnx" in outputs:
        act_bits = {q.bits for q in result.act_quantizers.values()}
        if len(act_bits) > 1:
            raise ValueError(f"export.target=qnn: one activation bit width expected, {act_bits}")
        outputs |= write_qnn_files(
            out_dir / outputs["onnx"], out_dir, layers, next(iter(act_bits), None)
        )
    atomic_write(
        out_dir / WEIGHTS_FILE,
        lambda tmp: save_quantized_weights(Path(tmp), layers, result.act_quantizers),
    )
    files = {"quantized_weights": WEIGHTS_FILE}
    if all(layer.zero_point is None for layer in layers):
        atomic_write_text(out_dir / ENCODINGS_FILE, json.dumps(result.encodings(layers), indent=1))
        files["encodings"] = ENCODINGS_FILE
    else:
        log.warning(
            "%s not written: AIMET encodings of asymmetric weight grids are not supported yet "
            "(quant.weight_symmetric=false); the integers and zero points are in %s",
            ENCODINGS_FILE,
            WEIGHTS_FILE,
        )
    atomic_torch_save(out_dir / STATE_FILE, quantizer_states(result.quantizers))
    weights = result.float_weights()
    atomic_write(out_dir / FLOAT_WEIGHTS_FILE, lambda tmp: save_float_weights(tmp, weights))
    if example_input is not None:
        manifest = {"input_shape": list(example_input.shape[1:])}
        atomic_write_text(out_dir / MANIFEST_FILE, json.dumps(manifest))
        outputs["manifest"] = MANIFEST_FILE
    return {
        **outputs,
        **files,
        "adaround_state": STATE_FILE,
        "float_weights": FLOAT_WEIGHTS_FILE,
    }


class SavesRunFiles:
    """``save``, the same for every front end's result (see :func:`save_run_files`)."""

    def save(
        self,
        out_dir: Path | str,
        example_input: torch.Tensor | None = None,
        config: ExportConfig | None = None,
    ) -> dict[str, str]:
        """Write the files a CLI run writes, each atomically; returns ``{kind: file name}``.

        Args:
            out_dir: The folder (created if missing).
            example_input: A batch the network accepts: a PyTorch result's ``model.onnx`` and
                ``load_quantized`` need it (None: no ONNX file).
            config: What to export (default: everything; ONNX when ``example_input`` is given).

        Example:
            >>> # result = adaround(net, images, ...)
            >>> # result.save("run", images[:2]); model = load_quantized("run", net)
        """
        if config is None:
            config = ExportConfig(onnx=example_input is not None, verify=False)
        return save_run_files(self, Path(out_dir), example_input, config)  # type: ignore[arg-type]


def export_run(
    result: CalibrationResult, out_dir: Path, example_input: torch.Tensor, config: ExportConfig
) -> dict[str, Any]:
    """:func:`save_run_files`, with the run's ``config.yaml`` listed (the app writes it).

    Returns:
        ``{"outputs": {kind: file name}}`` for ``results.json``.
    """
    files = save_run_files(result, out_dir, example_input, config)
    return {"outputs": {"config": "config.yaml", **files}}

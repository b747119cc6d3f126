"""The grid check: every exported integer against AdaRound's rounding rule and the other files.

``python -m adaround_lightning.verify RUN_DIR`` runs it on a finished run. It recomputes what it
can from the float network rather than trusting the code that wrote the files:

* ``floor(W/s)`` from the float weights (``float_weights.safetensors``) and the exported scales,
  in float64; with the learned ``V`` every integer must be ``clamp(floor(W/s) + 1[V >= 0])``;
* the ONNX ``DequantizeLinear`` of each weight: its integer initializer (``INT4``/``UINT4``
  unpacked, or ``INT8``; the container must hold the layer's range), scales, zero points (all
  0) and ``axis`` (the channel axis, or a scalar scale per tensor), read from the graph;
* AIMET's encodings by AIMET's definition: ``offset = q_min``, ``min = offset * scale``,
  ``max = (offset + 2**bitwidth - 1) * scale``, one entry per channel;
* the ONNX-vs-PyTorch logit gap of the run's evaluation, against :data:`LOGIT_TOLERANCE`
  (weights only), or their agreement on the predicted class (with activation grids).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaround_lightning.export.integers import (
    GridCheckError,
    QuantizedLayer,
    load_input_quantizers,
    load_quantized_weights,
)
from adaround_lightning.export.onnx import OnnxWeight, onnx_weights
from adaround_lightning.export.qnn import QNN_ENCODINGS_FILE, check_qnn_files
from adaround_lightning.export.run_dir import (
    ENCODINGS_FILE,
    FLOAT_WEIGHTS_FILE,
    MODEL_FILE,
    ONNX_FILE,
    ONNX_LAYERS_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
)

__all__ = ["ACT_TOP1_AGREEMENT", "LOGIT_TOLERANCE", "verify_grid"]

#: The ONNX model's logits may differ from PyTorch's by at most this fraction of the largest
#: logit magnitude (at least 1): float32 kernels that add in another order, nothing more. The
#: quickstart measures 5.7e-6 on logits of about 10.
LOGIT_TOLERANCE = 1e-4

#: With activation grids: the least percentage of images on which model.onnx and PyTorch
#: predict the same class (see ``_check_logit_gap``). The quickstart measures 100 % at A8 and
#: A4 (1000 images; 99.1 % of its A8 logits within 1e-4, the rest one rounding step apart).
ACT_TOP1_AGREEMENT = 99.0

#: ``W/s`` this close to an integer (relative, a few float32 ulps) may floor either way in the
#: float32 arithmetic of the export; the float64 recomputation accepts both there.
_FLOOR_ROUNDOFF = 4 * torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class _RunFiles:
    """What the check reads from a run dir (None: the optional file is absent)."""

    layers: list[QuantizedLayer]
    states: dict[str, dict[str, torch.Tensor]]
    model_state: dict[str, torch.Tensor] | None
    float_weights: dict[str, torch.Tensor] | None
    onnx: dict[str, OnnxWeight] | None
    encodings: dict[str, Any] | None
    results: dict[str, Any] | None
    onnx_layers: dict[str, dict[str, Any]] | None = None

    def param_key(self, layer: QuantizedLayer) -> str:
        """The layer's weight in ``encodings.json``: its ONNX tensor name, else ``NAME.weight``."""
        if self.onnx_layers is not None:
            return str(self.onnx_layers[layer.name]["weight"])
        return f"{layer.name}.weight"

    def input_entry(self, name: str) -> dict[str, Any] | None:
        """A layer's input grid in ``encodings.json`` (ONNX runs: keyed by the input tensor)."""
        assert self.encodings is not None
        activations = self.encodings["activation_encodings"]
        if self.onnx_layers is not None:
            entries = activations.get(self.onnx_layers[name]["input"]) or [None]
            return entries[0]
        return activations.get(name, {}).get("input", {}).get("0")

    @classmethod
    def read(cls, run_dir: Path) -> _RunFiles:
        from safetensors.torch import load_file

        def optional(name: str, load: Any) -> Any:
            return load(run_dir / name) if (run_dir / name).is_file() else None

        onnx_layers = optional(ONNX_LAYERS_FILE, lambda p: json.loads(p.read_text()))

        # An ONNX-path run has no PyTorch model; every other run must have one.
        def load_model(path: Path) -> Any:
            return torch.load(path, map_location="cpu", weights_only=True)

        return cls(
            layers=load_quantized_weights(run_dir / WEIGHTS_FILE),
            states=torch.load(run_dir / STATE_FILE, map_location="cpu", weights_only=True),
            model_state=optional(MODEL_FILE, load_model)
            if onnx_layers is not None
            else load_model(run_dir / MODEL_FILE),
            float_weights=optional(FLOAT_WEIGHTS_FILE, lambda p: load_file(str(p))),
            onnx=optional(ONNX_FILE, onnx_weights),
            encodings=optional(ENCODINGS_FILE, lambda p: json.loads(p.read_text())),
            results=optional("results.json", lambda p: json.loads(p.read_text())),
            onnx_layers=onnx_layers,
        )


def _rounding_from_float(
    layer: QuantizedLayer, weight: torch.Tensor, V: torch.Tensor, floor_scale: torch.Tensor | None
) -> None:
    """Every integer is ``clamp(floor(W/s) + 1[V >= 0])``, ``floor(W/s)`` recomputed in float64.

    ``s`` is the exported scale, or ``floor_scale`` where a learned ratio moved it after
    ``floor(W/s)`` was taken.
    """
    grid = (
        layer.broadcast_scale()
        if floor_scale is None
        else floor_scale.reshape(layer.broadcast_scale().shape)
    )
    ratio = weight.double() / grid.double()
    floor = torch.floor(ratio)
    up = (V >= 0).double()
    expected = torch.clamp(floor + up, layer.quant_min, layer.quant_max)
    # At W/s within round-off of an integer the export's float32 floor may be one off.
    edge = (ratio - torch.round(ratio)).abs() <= _FLOOR_ROUNDOFF * ratio.abs().clamp(min=1.0)
    q = layer.q.double()
    wrong = (q != expected) & ~(edge & ((q - expected).abs() <= 1))
    if wrong.any():
        raise GridCheckError(
            f"{layer.name}: {int(wrong.sum())} integers differ from clamp(floor(W/s) + 1[V>=0]) "
            f"with W from {FLOAT_WEIGHTS_FILE}"
        )


def _rounding_from_state(layer: QuantizedLayer, state: dict[str, torch.Tensor]) -> None:
    """Older run dirs without float weights: ``floor(W/s)`` as ``adaround_state.pt`` saved it."""
    floor = state["weight_floor"]
    expected = torch.clamp(
        floor + (state["V"] >= 0).to(floor.dtype), state["quant_min"], state["quant_max"]
    ).to(torch.int8)
    bad = int((expected != layer.q).sum())
    if bad:
        raise GridCheckError(
            f"{layer.name}: {bad} integers differ from clamp(floor(W/s) + 1[V>=0]) "
            f"in {WEIGHTS_FILE}"
        )


#: The integers each ONNX container holds.
_CONTAINER_RANGES = {"INT4": (-8, 7), "UINT4": (0, 15), "INT8": (-128, 127), "UINT8": (0, 255)}


def _check_onnx(layer: QuantizedLayer, weight: OnnxWeight | None) -> None:
    if weight is None:
        raise GridCheckError(f"{layer.name}: {ONNX_FILE} has no integer weight for the layer")
    low, high = _CONTAINER_RANGES.get(weight.container, (1, 0))
    if not low <= layer.quant_min <= layer.quant_max <= high:
        raise GridCheckError(
            f"{layer.name}: {ONNX_FILE} stores its {layer.bits}-bit integers "
            f"[{layer.quant_min}, {layer.quant_max}] as {weight.container}, which cannot hold them"
        )
    q = layer.q.numpy()
    if layer.group_size is not None and q.ndim > 2:  # stored (C_out, K), then reshaped
        q = q.reshape(q.shape[0], -1)
    # A Linear weight read by a MatMul on 3-D inputs is stored transposed, (in, out).
    transposed = q.ndim == 2 and not np.array_equal(weight.q, q) and weight.q.shape == q.T.shape
    if not np.array_equal(weight.q.astype(np.int16), (q.T if transposed else q).astype(np.int16)):
        raise GridCheckError(f"{layer.name}: {ONNX_FILE} stores different integers")
    scale = weight.scale.T if transposed and layer.group_size is not None else weight.scale
    if not np.array_equal(scale.reshape(-1), layer.scale.reshape(-1).numpy()):
        raise GridCheckError(f"{layer.name}: {ONNX_FILE} has different scales")
    if weight.zero_point.shape != weight.scale.shape or np.any(weight.zero_point != 0):
        raise GridCheckError(f"{layer.name}: {ONNX_FILE} zero points are not all 0 (symmetric)")
    if weight.block_size != (layer.group_size or 0):
        raise GridCheckError(
            f"{layer.name}: {ONNX_FILE} has block_size {weight.block_size}, the grid groups of "
            f"{layer.group_size}"
        )
    per_tensor = layer.ch_axis is None
    # Groups run along the input axis (1, or 0 when transposed); channels along ch_axis.
    along = 1 if layer.group_size is not None else layer.ch_axis
    axis = None if per_tensor else (1 - along if transposed else along)
    if (weight.scale.ndim == 0) != per_tensor or (not per_tensor and weight.axis != axis):
        raise GridCheckError(
            f"{layer.name}: {ONNX_FILE} dequantizes along axis {weight.axis}, the scales are "
            f"{'per tensor' if per_tensor else f'along axis {axis}'}"
        )


def _check_encodings(layer: QuantizedLayer, entries: list[dict[str, Any]] | None) -> None:
    scales = layer.scale.reshape(-1).double().tolist()
    if entries is None or len(entries) != len(scales):
        raise GridCheckError(f"{layer.name}: {ENCODINGS_FILE} needs one entry per scale")
    for entry, scale in zip(entries, scales, strict=True):
        bits, offset = entry.get("bitwidth"), entry.get("offset")
        fields_ok = bits == layer.bits and offset == layer.quant_min and entry["scale"] == scale
        if fields_ok:  # AIMET's definition of a grid from its offset and bitwidth
            low, high = offset * scale, (offset + 2**bits - 1) * scale
            fields_ok = math.isclose(entry["min"], low, rel_tol=1e-12, abs_tol=0.0)
            fields_ok = fields_ok and math.isclose(entry["max"], high, rel_tol=1e-12, abs_tol=0.0)
        if not fields_ok:
            raise GridCheckError(
                f"{layer.name}: {ENCODINGS_FILE} has a different grid (bitwidth, offset, scale, "
                "min or max)"
            )


def _check_layer(files: _RunFiles, layer: QuantizedLayer) -> None:
    state = files.states[layer.name]
    if files.float_weights is not None:
        weight = files.float_weights.get(f"{layer.name}.weight")
        if weight is None or weight.shape != layer.q.shape:
            raise GridCheckError(f"{layer.name}: {FLOAT_WEIGHTS_FILE} lacks the float weight")
        _rounding_from_float(layer, weight, state["V"], state.get("floor_scale"))
    else:
        _rounding_from_state(layer, state)
    # A group-wise quantizer holds its scale expanded to the weight's shape.
    grid = layer.broadcast_scale() if layer.group_size is not None else layer.scale
    if not torch.equal(state["scale"].flatten().float(), grid.flatten()):
        raise GridCheckError(f"{layer.name}: scales differ between {STATE_FILE} and {WEIGHTS_FILE}")
    if files.model_state is not None:
        model_weight = files.model_state.get(f"{layer.name}.weight")
        if model_weight is None or not torch.equal(model_weight.float(), layer.dequantized()):
            raise GridCheckError(f"{layer.name}: {MODEL_FILE} does not hold exactly s * q")
    if files.onnx is not None:
        _check_onnx(layer, files.onnx.get(layer.name))
    if files.encodings is not None:
        _check_encodings(layer, files.encodings["param_encodings"].get(files.param_key(layer)))


def _check_input_grids(files: _RunFiles, run_dir: Path) -> int:
    input_quantizers = load_input_quantizers(run_dir / WEIGHTS_FILE)
    for name, quantizer in input_quantizers.items():
        if name not in files.states:
            raise GridCheckError(f"{name}: an activation grid for a layer that is not quantized")
        if files.encodings is not None:
            entry = files.input_entry(name)
            if (
                entry is None
                or entry["scale"] != float(quantizer.scale)
                or entry["offset"] != quantizer.quant_min - int(quantizer.zero_point)
            ):
                raise GridCheckError(f"{name}: {ENCODINGS_FILE} has a different input grid")
    return len(input_quantizers)


def _check_logit_gap(parity: dict[str, Any] | None, activation_grids: int) -> float | None:
    """The evaluation's ONNX-vs-PyTorch gap against :data:`LOGIT_TOLERANCE`; None if unmeasured.

    With activation grids the two runtimes may round a value that their float sums (added in
    another order) put on either side of a rounding tie one step apart, and that step travels
    on through the network: the logit gap is then reported, and the predicted classes must
    agree on at least :data:`ACT_TOP1_AGREEMENT` percent of the images.
    """
    if not parity or "max_abs_logit_diff" not in parity:
        return None
    gap, scale = float(parity["max_abs_logit_diff"]), float(parity.get("max_abs_logit", 1.0))
    if activation_grids:
        agreement = parity.get("top1_agreement")
        if agreement is not None and not float(agreement) >= ACT_TOP1_AGREEMENT:
            raise GridCheckError(
                f"{ONNX_FILE}: its predicted class differs from PyTorch's on "
                f"{100.0 - float(agreement):.2f} % of the images, more than "
                f"{100.0 - ACT_TOP1_AGREEMENT:g} % (activation grids)"
            )
        return gap
    bound = LOGIT_TOLERANCE * max(1.0, scale)
    if not gap <= bound:
        raise GridCheckError(
            f"{ONNX_FILE}: its logits differ from PyTorch's by up to {gap:.3g}, more than the "
            f"bound {bound:.3g} ({LOGIT_TOLERANCE:g} of the largest logit, {scale:.3g})"
        )
    return gap


def verify_grid(run_dir: Path, onnx_parity: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check every exported integer against AdaRound's rounding rule and the other files.

    Args:
        run_dir: A run dir with at least ``quantized_weights.safetensors``,
            ``adaround_state.pt`` and ``quantized_model.pt``.
        onnx_parity: The evaluation's ONNX figures (``max_abs_logit_diff``,
            ``max_abs_logit``); None reads them from the run dir's ``results.json`` if any.

    Returns:
        ``{"layers", "weights", "activation_grids", "rounding_reference", "max_abs_logit_diff",
        "onnx_containers", "qnn_weights", "passed": True}``; ``onnx_containers`` counts the
        ONNX weights per element type (``{"INT4": 52}``), ``qnn_weights`` the weights of
        ``model_qnn.onnx`` checked (None: no QNN files).

    Raises:
        GridCheckError: Naming the first layer and file that disagree.
    """
    run_dir = Path(run_dir)
    files = _RunFiles.read(run_dir)
    if set(files.states) != {layer.name for layer in files.layers}:
        raise GridCheckError(f"{STATE_FILE} and {WEIGHTS_FILE} list different layers")
    for layer in files.layers:
        _check_layer(files, layer)
    if onnx_parity is None and files.results is not None:
        onnx_parity = files.results.get("onnx")
    activation_grids = _check_input_grids(files, run_dir)
    gap = _check_logit_gap(onnx_parity, activation_grids) if files.onnx is not None else None
    qnn_weights = (
        check_qnn_files(run_dir, files.layers) if (run_dir / QNN_ENCODINGS_FILE).is_file() else None
    )
    containers: dict[str, int] = {}
    for weight in (files.onnx or {}).values():
        containers[weight.container] = containers.get(weight.container, 0) + 1
    return {
        "layers": len(files.layers),
        "weights": sum(layer.q.numel() for layer in files.layers),
        "activation_grids": activation_grids,
        "rounding_reference": (
            f"floor(W/s) from {FLOAT_WEIGHTS_FILE}"
            if files.float_weights is not None
            else f"floor(W/s) saved in {STATE_FILE}"
        ),
        "max_abs_logit_diff": gap,
        "onnx_containers": containers,
        "qnn_weights": qnn_weights,
        "passed": True,
    }

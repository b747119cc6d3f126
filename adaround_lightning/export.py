"""Export: integer weights exactly on the grid, AIMET encodings, an int8 ONNX model, and checks.

Files written to a run directory by :func:`export_run`:

* ``quantized_weights.safetensors``: per quantized layer ``NAME.q`` (int8), ``NAME.scale``
  (float32, one per output channel or a scalar); ``ch_axis``, bits and range in the metadata.
  With activation quantization also ``NAME.input_scale`` (float32) and ``NAME.input_zero_point``
  (int32) of the layer's input grid.
* ``encodings.json``: AIMET's encodings format: ``param_encodings`` (loadable with
  ``QuantizationSimModel.set_and_freeze_param_encodings``) and, with activation quantization,
  ``activation_encodings`` per layer input.
* ``model.onnx``: the network with every quantized weight stored as an int8 initializer feeding a
  ``DequantizeLinear`` (per-axis where scales are per channel); with activation quantization each
  quantized layer's input passes a ``QuantizeLinear``/``DequantizeLinear`` pair (uint8, behind a
  ``Clip`` to the b-bit range below 8 bits).
* ``adaround_state.pt``: what the grid check needs: per layer ``V``, ``floor(W/s)``, the scale
  and the range.

:func:`verify_grid` checks that every exported integer equals
``clamp(floor(W/s) + 1[V >= 0], q_min, q_max)`` for the learned ``V``, that the float weights of
``quantized_model.pt`` are exactly ``s * q`` and that ONNX and encodings carry the same integers and
scales. ``python -m adaround_lightning.verify RUN_DIR`` runs it on a finished run.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adaround_lightning.activations import ActivationQuantizer, attach_input_quantizers
from adaround_lightning.quantizer import AdaroundFakeQuantizer

__all__ = [
    "GridCheckError",
    "QuantizedLayer",
    "aimet_encodings",
    "export_onnx",
    "load_input_quantizers",
    "load_quantized",
    "load_quantized_weights",
    "onnx_logits",
    "quantized_layers",
    "quantizer_states",
    "save_quantized_weights",
    "verify_grid",
]

WEIGHTS_FILE = "quantized_weights.safetensors"
ENCODINGS_FILE = "encodings.json"
ONNX_FILE = "model.onnx"
STATE_FILE = "adaround_state.pt"
MODEL_FILE = "quantized_model.pt"


class GridCheckError(RuntimeError):
    """An exported integer or weight is not what AdaRound's learned rounding gives."""


@dataclass
class QuantizedLayer:
    """One layer's integer weight and grid.

    Attributes:
        name: Module name; the weight is ``NAME.weight`` in the state_dict.
        q: The integers, int8, shape of the weight.
        scale: float32, shape ``(C,)`` per channel along ``ch_axis`` or ``()`` per tensor.
        ch_axis: Channel axis of per-channel scales, None per tensor.
        quant_min: Smallest integer of the grid.
        quant_max: Largest integer of the grid.
    """

    name: str
    q: torch.Tensor
    scale: torch.Tensor
    ch_axis: int | None
    quant_min: int
    quant_max: int

    @property
    def bits(self) -> int:
        """Bit width."""
        return int(np.log2(self.quant_max - self.quant_min + 1))

    def dequantized(self) -> torch.Tensor:
        """``s * q`` in float32, the weight the float model holds."""
        return self.q.float() * self._broadcast_scale()

    def _broadcast_scale(self) -> torch.Tensor:
        if self.ch_axis is None:
            return self.scale
        shape = [1] * self.q.dim()
        shape[self.ch_axis] = -1
        return self.scale.reshape(shape)


def quantized_layers(quantizers: dict[str, AdaroundFakeQuantizer]) -> list[QuantizedLayer]:
    """The integer weights and grids of calibrated quantizers (on the CPU).

    Example:
        >>> fq = AdaroundFakeQuantizer(quant_min=-8, quant_max=7)
        >>> _ = fq(torch.randn(3, 2))
        >>> quantized_layers({"fc": fq})[0].q.dtype
        torch.int8
    """
    layers = []
    for name, fq in quantizers.items():
        per_channel = fq.is_per_channel
        layers.append(
            QuantizedLayer(
                name=name,
                q=fq.integer_weight().cpu().contiguous(),
                scale=(fq.scale.flatten() if per_channel else fq.scale.reshape(()))
                .float()
                .cpu()
                .contiguous(),
                ch_axis=fq.ch_axis if per_channel else None,
                quant_min=int(fq.quant_min),
                quant_max=int(fq.quant_max),
            )
        )
    return layers


def save_quantized_weights(
    path: Path,
    layers: list[QuantizedLayer],
    input_quantizers: dict[str, ActivationQuantizer] | None = None,
) -> None:
    """Write the integer weights and scales as safetensors, grids in the metadata.

    ``input_quantizers`` (activation quantization) add ``NAME.input_scale`` and
    ``NAME.input_zero_point`` and their bits in the ``activations`` metadata entry.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    grids: dict[str, Any] = {}
    activations: dict[str, Any] = {}
    for name, quantizer in (input_quantizers or {}).items():
        tensors[f"{name}.input_scale"] = quantizer.scale.detach().float().cpu().reshape(())
        tensors[f"{name}.input_zero_point"] = quantizer.zero_point.detach().cpu().reshape(())
        activations[name] = {
            "bits": quantizer.bits,
            "quant_min": 0,
            "quant_max": quantizer.quant_max,
        }
    for layer in layers:
        tensors[f"{layer.name}.q"] = layer.q
        tensors[f"{layer.name}.scale"] = layer.scale
        grids[layer.name] = {
            "ch_axis": layer.ch_axis,
            "bits": layer.bits,
            "quant_min": layer.quant_min,
            "quant_max": layer.quant_max,
        }
    metadata = {"format": "adaround_lightning/1", "layers": json.dumps(grids)}
    if activations:
        metadata["activations"] = json.dumps(activations)
    save_file(tensors, str(path), metadata=metadata)


def load_quantized_weights(path: Path) -> list[QuantizedLayer]:
    """Read what :func:`save_quantized_weights` wrote."""
    from safetensors import safe_open

    layers = []
    with safe_open(str(path), framework="pt") as handle:
        grids = json.loads(handle.metadata()["layers"])
        for name, grid in grids.items():
            layers.append(
                QuantizedLayer(
                    name=name,
                    q=handle.get_tensor(f"{name}.q"),
                    scale=handle.get_tensor(f"{name}.scale"),
                    ch_axis=grid["ch_axis"],
                    quant_min=grid["quant_min"],
                    quant_max=grid["quant_max"],
                )
            )
    return layers


def load_input_quantizers(path: Path) -> dict[str, ActivationQuantizer]:
    """The calibrated input quantizers stored by :func:`save_quantized_weights` (may be empty)."""
    from safetensors import safe_open

    quantizers: dict[str, ActivationQuantizer] = {}
    with safe_open(str(path), framework="pt") as handle:
        activations = json.loads(handle.metadata().get("activations", "{}"))
        for name, grid in activations.items():
            quantizer = ActivationQuantizer(grid["bits"])
            quantizer.scale.copy_(handle.get_tensor(f"{name}.input_scale"))
            quantizer.zero_point.copy_(handle.get_tensor(f"{name}.input_zero_point"))
            quantizer.calibrated = True
            quantizers[name] = quantizer
    return quantizers


def aimet_encodings(
    layers: list[QuantizedLayer], input_quantizers: dict[str, ActivationQuantizer] | None = None
) -> dict[str, Any]:
    """AIMET's encodings dictionary for the quantized weights (and layer inputs).

    AIMET describes a signed symmetric grid with an unsigned offset: ``offset = q_min``,
    ``min = offset * scale``, ``max = (offset + 2**bits - 1) * scale = q_max * scale``.
    An asymmetric activation grid with zero point ``z`` has ``offset = -z``; activation
    encodings are keyed by layer name, then ``"input"``, then the input index ``"0"``.

    Example:
        >>> layer = QuantizedLayer("fc", torch.zeros(2, 2, dtype=torch.int8),
        ...                        torch.tensor([0.5, 0.25]), 0, -8, 7)
        >>> aimet_encodings([layer])["param_encodings"]["fc.weight"][1]["max"]
        1.75
    """
    params: dict[str, list[dict[str, Any]]] = {}
    for layer in layers:
        scales = layer.scale.reshape(-1).double().tolist()
        params[f"{layer.name}.weight"] = [
            {
                "bitwidth": layer.bits,
                "dtype": "int",
                "is_symmetric": "True",
                "max": layer.quant_max * s,
                "min": layer.quant_min * s,
                "offset": layer.quant_min,
                "scale": s,
            }
            for s in scales
        ]
    activations: dict[str, Any] = {}
    for name, quantizer in (input_quantizers or {}).items():
        scale, offset = float(quantizer.scale), -int(quantizer.zero_point)
        activations[name] = {
            "input": {
                "0": {
                    "bitwidth": quantizer.bits,
                    "dtype": "int",
                    "is_symmetric": "False",
                    "max": (offset + quantizer.quant_max) * scale,
                    "min": offset * scale,
                    "offset": offset,
                    "scale": scale,
                }
            }
        }
    return {"version": "0.6.1", "activation_encodings": activations, "param_encodings": params}


def _torchscript_export(
    model: nn.Module, example_input: torch.Tensor, buffer: io.BytesIO, opset: int
) -> None:
    torch.onnx.export(
        model,
        (example_input.cpu(),),
        buffer,
        dynamo=False,
        opset_version=opset,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        do_constant_folding=True,
    )


def export_onnx(
    model: nn.Module,
    layers: list[QuantizedLayer],
    example_input: torch.Tensor,
    path: Path,
    opset: int = 17,
) -> None:
    """Export ``model`` to ONNX with each quantized weight as ``DequantizeLinear(int8 q)``.

    The float weights of ``model`` must be exactly ``s * q``. The exported graph is located by
    weight content, so whatever names the exporter gives initializers, every quantized weight is
    replaced: an int8 initializer ``NAME.weight_quantized``, its scale and zero point, and a
    ``DequantizeLinear`` (``axis = ch_axis`` when per channel) whose output feeds the consumers.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = model.eval().cpu()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated upstream but needs no onnxscript and keeps
        # parameter tensors as initializers, which is what the int8 rewrite below relies on.
        warnings.simplefilter("ignore")
        _torchscript_export(model, example_input, buffer, opset)
    graph_model = onnx.load_from_string(buffer.getvalue())
    graph = graph_model.graph
    by_content: dict[tuple[tuple[int, ...], bytes], QuantizedLayer] = {}
    for layer in layers:
        weight = layer.dequantized().numpy()
        by_content[(weight.shape, weight.tobytes())] = layer
    replaced: set[str] = set()
    kept, nodes = [], []
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        layer = (
            by_content.get((array.shape, array.tobytes())) if array.dtype == np.float32 else None
        )
        if layer is None or layer.name in replaced:
            kept.append(init)
            continue
        replaced.add(layer.name)
        base = f"{layer.name}.weight"
        scale = layer.scale.numpy().astype(np.float32)
        zero = np.zeros(scale.shape, dtype=np.int8)
        kept += [
            numpy_helper.from_array(layer.q.numpy(), f"{base}_quantized"),
            numpy_helper.from_array(scale, f"{base}_scale"),
            numpy_helper.from_array(zero, f"{base}_zero_point"),
        ]
        attributes = {"axis": layer.ch_axis} if layer.ch_axis is not None else {}
        nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
                [init.name],
                name=f"{base}_dequantize",
                **attributes,
            )
        )
    missing = sorted({layer.name for layer in layers} - replaced)
    if missing:
        raise GridCheckError(
            f"ONNX export: no initializer equals s * q for {missing[:3]}; the model's weights "
            "are not the quantized ones"
        )
    del graph.initializer[:]
    graph.initializer.extend(kept)
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + existing)
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(path))


def onnx_logits(path: Path, inputs: torch.Tensor) -> np.ndarray:
    """Run ``model.onnx`` with onnxruntime on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": inputs.cpu().numpy()})[0]


def quantizer_states(quantizers: dict[str, AdaroundFakeQuantizer]) -> dict[str, dict[str, Any]]:
    """What the grid check needs per layer: ``V``, ``floor(W/s)``, scale and range (CPU)."""
    return {
        name: {
            "V": fq.V.detach().cpu(),
            "weight_floor": fq.weight_floor.cpu(),
            "scale": fq.scale.cpu(),
            "quant_min": int(fq.quant_min),
            "quant_max": int(fq.quant_max),
        }
        for name, fq in quantizers.items()
    }


def _onnx_integers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return {
        init.name[: -len(".weight_quantized")]: numpy_helper.to_array(init)
        for init in graph.initializer
        if init.name.endswith(".weight_quantized")
    }


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
    onnx_q = _onnx_integers(onnx_path) if onnx_path.is_file() else None
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


def load_quantized(run_dir: Path) -> nn.Module:
    """Rebuild the calibrated network of a run from its files.

    Builds the architecture from ``config.yaml``, folds BatchNorm (the saved network is
    BN-folded), loads ``quantized_model.pt`` and writes ``s * q`` from
    ``quantized_weights.safetensors`` into the quantized layers.

    Example:
        >>> model = load_quantized(Path("outputs/quickstart/2026-01-01_00-00-00"))  # doctest: +SKIP
    """
    from omegaconf import OmegaConf

    from adaround_lightning.bn_fold import fold_batch_norms
    from adaround_lightning.models import ModelConfig, build_model

    run_dir = Path(run_dir)
    config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
    assert isinstance(config, dict)
    results = json.loads((run_dir / "results.json").read_text())
    model_cfg = dict(config["model"])
    model_cfg.update(weights=None, checkpoint=None)
    model = build_model(ModelConfig(**model_cfg))
    example = torch.zeros(2, *results["input_shape"])
    fold_batch_norms(model, example)
    state = torch.load(run_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    with torch.no_grad():
        for layer in load_quantized_weights(run_dir / WEIGHTS_FILE):
            model.get_submodule(layer.name).weight.copy_(layer.dequantized())
    attach_input_quantizers(model, load_input_quantizers(run_dir / WEIGHTS_FILE))
    return model.eval()

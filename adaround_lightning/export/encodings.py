"""AIMET's encodings format for the quantized weights and, with activation quantization, inputs.

``encodings.json`` holds ``param_encodings`` (loadable with AIMET's
``QuantizationSimModel.set_and_freeze_param_encodings``) and ``activation_encodings`` per layer
input.
"""

from __future__ import annotations

from typing import Any

from adaround_lightning.export.integers import QuantizedLayer
from adaround_lightning.quant.activations import ActivationQuantizer

__all__ = ["aimet_encodings"]


def aimet_encodings(
    layers: list[QuantizedLayer], input_quantizers: dict[str, ActivationQuantizer] | None = None
) -> dict[str, Any]:
    """AIMET's encodings dictionary for the quantized weights (and layer inputs).

    AIMET describes a signed symmetric grid with an unsigned offset: ``offset = q_min``,
    ``min = offset * scale``, ``max = (offset + 2**bits - 1) * scale = q_max * scale``.
    An asymmetric activation grid with zero point ``z`` has ``offset = -z``, a symmetric one
    (signed, ``z = 0``) ``offset = q_min``; activation
    encodings are keyed by layer name, then ``"input"``, then the input index ``"0"``.

    Example:
        >>> import torch
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
        scale = float(quantizer.scale)
        offset = quantizer.quant_min - int(quantizer.zero_point)
        activations[name] = {
            "input": {
                "0": {
                    "bitwidth": quantizer.bits,
                    "dtype": "int",
                    "is_symmetric": str(quantizer.symmetric),
                    "max": (offset + 2**quantizer.bits - 1) * scale,
                    "min": offset * scale,
                    "offset": offset,
                    "scale": scale,
                }
            }
        }
    return {"version": "0.6.1", "activation_encodings": activations, "param_encodings": params}

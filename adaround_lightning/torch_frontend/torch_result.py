"""What :func:`~adaround_lightning.api.adaround` returns.

:class:`AdaroundResult` satisfies
:class:`~adaround_lightning.engine.records.results.CalibrationResult`: the files a CLI run writes
come from :meth:`AdaroundResult.save`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaround_lightning.core.atomic import atomic_torch_save, atomic_write
from adaround_lightning.engine.mixed.choose import BitAllocation
from adaround_lightning.engine.records.coverage import WeightCoverage
from adaround_lightning.engine.records.results import CacheReport, LayerReport, RefinementReport
from adaround_lightning.export.encodings import aimet_encodings
from adaround_lightning.export.integers import QuantizedLayer
from adaround_lightning.export.onnx import export_onnx
from adaround_lightning.export.run_dir import MODEL_FILE, ONNX_FILE, ExportConfig, SavesRunFiles
from adaround_lightning.quant.activations import ActivationQuantizer, attach_input_quantizers
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer

__all__ = ["AdaroundResult"]


@dataclass
class AdaroundResult(SavesRunFiles):
    """The quantized network and how it was obtained.

    Attributes:
        model: The BN-folded network whose quantized layers hold ``s * q`` (float tensors).
        float_model: The BN-folded float network, on the same device.
        quantizers: Per quantized layer name, its quantizer (scale, learned ``V``, grid).
        layers: Per-layer reports in calibration order.
        skipped: Layers left in float, name -> reason.
        seconds: Wall time of the whole calibration, caching included.
        act_quantizers: Per quantized layer name, the quantizer of its input (empty without
            ``quant.act_bits``); they are attached to ``model``.
        cache: Where the activation cache lived and how many passes the walk made.
        coverage: Quantized weight elements out of all Conv/Linear/attention-projection ones,
            and every weight left in float with its reason.
        bit_allocation: The bits a budget chose and what they cost (None without a budget).
        footprint: Average weight bits and model size in bytes at the bits used
            (:func:`~adaround_lightning.engine.mixed.choose.weight_footprint`).
        refinement: What the network-level refinement after the walk did (None: not run).
    """

    model: nn.Module
    float_model: nn.Module
    quantizers: dict[str, AdaroundFakeQuantizer]
    layers: list[LayerReport]
    skipped: dict[str, str]
    seconds: float
    act_quantizers: dict[str, ActivationQuantizer] = field(default_factory=dict)
    cache: CacheReport | None = None
    coverage: WeightCoverage | None = None
    bit_allocation: BitAllocation | None = None
    footprint: dict[str, float] | None = None
    refinement: RefinementReport | None = None

    def nearest_model(self) -> nn.Module:
        """A copy of the float network with round-to-nearest weights on the same grids.

        With activation quantization, copies of the same input quantizers are attached.
        """
        nearest = copy.deepcopy(self.float_model)
        with torch.no_grad():
            for name, quantizer in self.quantizers.items():
                layer = nearest.get_submodule(name)
                weight = quantizer.nearest_weight()
                layer.weight.copy_(weight.to(layer.weight.dtype))
        if self.act_quantizers:
            copies = {n: copy.deepcopy(q) for n, q in self.act_quantizers.items()}
            attach_input_quantizers(nearest, copies)
        return nearest

    def float_weights(self) -> dict[str, torch.Tensor]:
        """The BN-folded float weight of every quantized layer (``{name}.weight``), on the CPU."""
        return {
            f"{name}.weight": self.float_model.get_submodule(name).weight.detach().cpu()
            for name in self.quantizers
        }

    def encodings(self, layers: list[QuantizedLayer]) -> dict[str, Any]:
        """AIMET encodings keyed by module name (``aimet_torch``'s QuantSim reads them)."""
        return aimet_encodings(layers, self.act_quantizers)

    def write_model_files(
        self,
        out_dir: Path,
        example_input: torch.Tensor | None,
        config: ExportConfig,
        layers: list[QuantizedLayer],
    ) -> dict[str, str]:
        """``quantized_model.pt`` and, with ``config.onnx``, ``model.onnx`` (checked)."""
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        atomic_torch_save(out_dir / MODEL_FILE, state)
        outputs = {"quantized_model": MODEL_FILE}
        if config.onnx:
            if example_input is None:
                raise ValueError("model.onnx needs an example input: pass example_input")
            model = copy.deepcopy(self.model).cpu()
            atomic_write(
                out_dir / ONNX_FILE,
                lambda tmp: export_onnx(model, layers, example_input, Path(tmp), config),
            )
            outputs["onnx"] = ONNX_FILE
        return outputs

"""What :func:`~adaround_lightning.api.adaround` returns.

:class:`OnnxAdaroundResult` satisfies
:class:`~adaround_lightning.engine.records.results.CalibrationResult`, as the PyTorch front end's
result does: :meth:`OnnxAdaroundResult.save` writes the files a CLI run writes, ONNX-keyed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaround_lightning.engine.mixed.choose import BitAllocation
from adaround_lightning.engine.records.coverage import WeightCoverage
from adaround_lightning.engine.records.results import CacheReport, LayerReport
from adaround_lightning.export.integers import QuantizedLayer
from adaround_lightning.export.run_dir import SavesRunFiles
from adaround_lightning.onnx_frontend.onnx_graph import OnnxGraph, OnnxLayer
from adaround_lightning.onnx_frontend.onnx_sampler import OnnxSampler
from adaround_lightning.onnx_frontend.onnx_writer import onnx_encodings, write_onnx_model_files
from adaround_lightning.onnx_frontend.torch_form import TorchForm
from adaround_lightning.quant.activations import ActivationQuantizer
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer

__all__ = ["OnnxAdaroundResult"]


@dataclass
class OnnxAdaroundResult(SavesRunFiles):
    """What :func:`~adaround_lightning.api.adaround` produced.

    Attributes:
        graph: The float graph and its layers.
        sampler: The onnxruntime session, for evaluation with any weights.
        float_values: The float weights and biases (ONNX layouts), per initializer name.
        values: The same after calibration: ``s * q`` weights, corrected biases.
        quantizers: Per layer name, its finished quantizer (PyTorch layout).
        forms: Per quantized layer name, its PyTorch form (the transpose flags for export).
        layers: Per-layer reports, in calibration order.
        left_in_float: Per layer left in float, why.
        act_quantizers: Per layer name, its input grid (with ``quant.act_bits``).
        seconds: Wall time of the calibration.
        cache: Always None: onnxruntime recomputes each layer's inputs, nothing is cached.
        bit_allocation: The bits a budget chose (None without a budget).
        footprint: Average weight bits and model size in bytes at the bits used.
    """

    graph: OnnxGraph
    sampler: OnnxSampler
    float_values: dict[str, np.ndarray]
    values: dict[str, np.ndarray]
    quantizers: dict[str, AdaroundFakeQuantizer] = field(default_factory=dict)
    forms: dict[str, TorchForm] = field(default_factory=dict)
    layers: list[LayerReport] = field(default_factory=list)
    left_in_float: dict[str, str] = field(default_factory=dict)
    act_quantizers: dict[str, ActivationQuantizer] = field(default_factory=dict)
    seconds: float = 0.0
    cache: CacheReport | None = None
    bit_allocation: BitAllocation | None = None
    footprint: dict[str, float] | None = None

    @property
    def skipped(self) -> dict[str, str]:
        """Layers left in float, name -> reason (the protocol's name for ``left_in_float``)."""
        return self.left_in_float

    @property
    def coverage(self) -> WeightCoverage:
        """Quantized weight elements out of those of every weighted Conv/Gemm/MatMul."""
        initializers = self.graph.initializers
        quantized = sum(initializers[self.layer(n).weight].size for n in self.quantizers)
        left = dict(self.left_in_float)
        total = quantized + sum(
            initializers[layer.weight].size for layer in self.graph.layers if layer.name in left
        )
        return WeightCoverage(int(quantized), int(total), left)

    def layer(self, name: str) -> OnnxLayer:
        """The ONNX layer called ``name``."""
        return next(layer for layer in self.graph.layers if layer.name == name)

    def nearest_values(self) -> dict[str, np.ndarray]:
        """Float weights with each quantized one rounded to nearest on its grid (no correction)."""
        values = dict(self.float_values)
        for name, quantizer in self.quantizers.items():
            nearest = quantizer.nearest_weight()
            values[self.layer(name).weight] = self.forms[name].onnx_weight(nearest)
        return values

    def float_weights(self) -> dict[str, torch.Tensor]:
        """The float weight of every quantized layer (``{name}.weight``), PyTorch layout."""
        weights = {}
        for name, form in self.forms.items():
            array = self.float_values[self.layer(name).weight]
            weights[f"{name}.weight"] = torch.tensor(
                np.ascontiguousarray(array.T if form.transposed else array)
            )
        return weights

    def encodings(self, layers: list[QuantizedLayer]) -> dict[str, Any]:
        """AIMET-ONNX encodings: weights keyed by initializer name, inputs by tensor name."""
        return onnx_encodings(self, layers)

    def write_model_files(
        self, out_dir: Path, example_input: object, config: object, layers: list[QuantizedLayer]
    ) -> dict[str, str]:
        """``model.onnx`` (the input graph with QDQ nodes) and ``onnx_layers.json``.

        The graph needs no example input, and is always written (``config.onnx`` is PyTorch's).
        """
        return write_onnx_model_files(self, out_dir, layers, config)  # type: ignore[arg-type]

"""Typed results of a calibration: per-layer reports and the quantized network.

Example:
    >>> report = LayerReport("fc", "Linear", [2, 3], 4, True, None, 0.2, 0.1, 0.25, 1.0, 100)
    >>> LayerReport(**report.to_dict()) == report
    True
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from adaround_lightning.engine.records.coverage import WeightCoverage
from adaround_lightning.quant.activations import ActivationQuantizer, attach_input_quantizers
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer

__all__ = ["AdaroundResult", "CacheReport", "LayerReport"]


@dataclass
class LayerReport:
    """What happened to one layer.

    Attributes:
        name: Module name.
        type: Module class name.
        weight_shape: Shape of the weight.
        bits: Bit width.
        per_channel: Per-channel scales or one per tensor.
        activation: Name of the activation included in the target, if any.
        mse_nearest: Output reconstruction MSE (mean over all elements, whole calibration set) with
            round-to-nearest weights on the same grid.
        mse_adaround: The same with AdaRound's hard-rounded weights.
        flipped_fraction: Fraction of weights rounded differently from nearest.
        seconds: Wall time of this layer: caching, fit and evaluation.
        iters: Optimisation steps planned for the fit that learned this layer's rounding
            (block-wise: the block fit's, shared by its layers).
        steps_run: The steps that fit took: fewer than ``iters`` when every ``h(V)`` was
            binary before the end (``adaround.stop_when_binary``); None in reports written
            before this field existed.
        loss_curve: ``[step, reconstruction, regularization]`` rows, at most 200.
        block: The block whose joint fit learned this layer's rounding, None when the layer
            was fitted on its own (layer-wise, or a layer outside any block).
    """

    name: str
    type: str
    weight_shape: list[int]
    bits: int
    per_channel: bool
    activation: str | None
    mse_nearest: float
    mse_adaround: float
    flipped_fraction: float
    seconds: float
    iters: int
    loss_curve: list[list[float]] = field(default_factory=list)
    block: str | None = None
    steps_run: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


@dataclass
class CacheReport:
    """Where the activation cache lived and how often the data went through the networks.

    Attributes:
        device: The ``adaround.cache_device`` setting.
        dtype: The storage dtype.
        budget_bytes: The memory budget (None: the default shares).
        peak_bytes: Per tier (``accelerator``, ``cpu``, ``disk``), the most bytes held at once.
        buffers: Per tier, how many buffers were placed there.
        full_network_passes: Passes of the calibration set from the images through a network
            (the float and the quantized network count one each; the activation ranges after
            the walk count one).
        streamed_block_passes: Block forwards that carried a cached input to the next block.
        reused_block_outputs: Block inputs that were the previous block's cached float output
            ``B(x)`` (a block-wise fit's targets), so they cost no forward at all.
        restarts: Blocks whose input came from the images although the block before was cached.
        forward_batch_size: Chunk of the forward passes that filled the cache.
        seconds: Time spent filling the cache.
    """

    device: str
    dtype: str
    budget_bytes: int | None
    peak_bytes: dict[str, int]
    buffers: dict[str, int]
    full_network_passes: int
    streamed_block_passes: int
    restarts: int
    forward_batch_size: int
    seconds: float
    reused_block_outputs: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


@dataclass
class AdaroundResult:
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

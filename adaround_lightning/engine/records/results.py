"""Typed results of a calibration: per-layer reports, the cache report, the result protocol.

Example:
    >>> report = LayerReport("fc", "Linear", [2, 3], 4, True, None, 0.2, 0.1, 0.25, 1.0, 100)
    >>> LayerReport(**report.to_dict()) == report
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from adaround_lightning.engine.records.coverage import WeightCoverage
from adaround_lightning.quant.activations import ActivationQuantizer
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer

__all__ = [
    "CacheReport",
    "CalibrationResult",
    "LayerReport",
    "RefinementReport",
    "calibration_record",
]


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
        mse_nearest: Output reconstruction MSE (mean over all elements, whole calibration set;
            the first 32 samples for a layer fitted in a block and not bias-corrected) with
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
        group_size: Elements per scale of a group-wise grid (``quant.group_size``), None when
            the grid is per channel or per tensor.
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
    group_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


@dataclass
class CacheReport:
    """Where the activation cache lived and how often the data went through the networks.

    Attributes:
        device: The ``engine.cache_device`` setting.
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
class RefinementReport:
    """What the network-level refinement after the walk did (``results.json``'s ``refinement``).

    Attributes:
        bits: The smallest weight bit width, the one ``adaround.refine_bits`` matched.
        steps: Steps planned (``adaround.refine_steps``).
        steps_run: Steps taken (fewer once every ``h(V)`` was binary).
        flips: Weights whose rounding the refinement changed from the walk's.
        flipped_fraction: ``flips`` over all quantized weight elements.
        divergence_before: The output divergence of the quantized network from the float one on
            the calibration images before the refinement (KL for ``(N, classes)`` scores).
        divergence_after: The same after it.
        seconds: Wall time of the refinement, the two divergence passes included.
        batch_size: Calibration samples per step.
        block_weight: ``adaround.refine_block_weight``.
        blocks: Blocks whose output error was in the loss.
        resumed: Read from the checkpoint of an earlier run, not trained again.
        loss_curve: ``[step, output, blocks, regularization]`` rows, at most 200.
    """

    bits: int
    steps: int
    steps_run: int
    flips: int
    flipped_fraction: float
    divergence_before: float
    divergence_after: float
    seconds: float
    batch_size: int
    block_weight: float
    blocks: int
    resumed: bool = False
    loss_curve: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


@runtime_checkable
class CalibrationResult(Protocol):
    """What every front end's calibration returns (``adaround`` and ``adaround_onnx``).

    Attributes:
        quantizers: Per quantized layer name, its finished quantizer (PyTorch weight layout).
        act_quantizers: Per layer name, its input grid (empty without ``quant.act_bits``).
        layers: Per-layer reports, in calibration order.
        skipped: Layers left in float, name -> reason.
        seconds: Wall time of the calibration.
        cache: The activation cache's report (None where the front end keeps no cache).
    """

    quantizers: dict[str, AdaroundFakeQuantizer]
    act_quantizers: dict[str, ActivationQuantizer]
    layers: list[LayerReport]
    seconds: float
    cache: CacheReport | None

    @property
    def skipped(self) -> dict[str, str]: ...

    @property
    def coverage(self) -> WeightCoverage | None: ...

    def float_weights(self) -> dict[str, torch.Tensor]:
        """The float weight of every quantized layer, ``{name}.weight``, PyTorch layout, CPU."""
        ...

    def encodings(self, layers: list[Any]) -> dict[str, Any]:
        """AIMET encodings of ``layers`` (``QuantizedLayer``), keyed as its runtime reads them."""
        ...

    def write_model_files(
        self, out_dir: Path, example_input: torch.Tensor | None, config: Any, layers: list[Any]
    ) -> dict[str, str]:
        """Write the quantized model's own files; returns ``{kind: file name}``."""
        ...

    def save(
        self, out_dir: Path, example_input: torch.Tensor | None = None, config: Any = None
    ) -> dict[str, str]:
        """Write every file a CLI run writes (see :mod:`adaround_lightning.export.run_dir`)."""
        ...


def calibration_record(result: CalibrationResult) -> dict[str, Any]:
    """The calibration's part of ``results.json``: layers, float layers, coverage, cache, time.

    Example:
        >>> from types import SimpleNamespace
        >>> record = calibration_record(SimpleNamespace(layers=[], skipped={"fc": "excluded"},
        ...     coverage=None, cache=None, seconds=1.23456))
        >>> record["skipped"], record["calibration_seconds"]
        ({'fc': 'excluded'}, 1.235)
    """
    coverage, cache = result.coverage, result.cache
    allocation = getattr(result, "bit_allocation", None)  # the ONNX path has none
    refinement = getattr(result, "refinement", None)
    return {
        "layers": [report.to_dict() for report in result.layers],
        "skipped": dict(result.skipped),
        "coverage": coverage.to_dict() if coverage is not None else None,
        "cache": cache.to_dict() if cache is not None else None,
        "calibration_seconds": round(result.seconds, 3),
        "bit_allocation": allocation.to_dict() if allocation is not None else None,
        "footprint": getattr(result, "footprint", None),
        "refinement": refinement.to_dict() if refinement is not None else None,
    }

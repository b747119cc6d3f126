"""Typed settings of a calibration, validated on construction.

Example:
    >>> quant = QuantConfig(weight_bits=3, per_channel=True, first_layer_bits=8)
    >>> quant.bits_for("conv1", is_first=True, is_last=False)
    8
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from adaround_lightning.loss import DEFAULT_REG_PARAM

__all__ = ["AdaroundConfig", "QuantConfig"]


def _check_bits(name: str, bits: Any) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"{name} must be an integer from 2 to 8, got {bits!r}")


@dataclass
class QuantConfig:
    """Which layers are quantized, and to how many bits.

    Attributes:
        weight_bits: Bits of every quantized weight unless overridden below (2 to 8).
        per_channel: One scale per output channel (True) or one per tensor (False).
        exclude: Module names (``fnmatch`` patterns, e.g. ``"classifier.*"``) left in float.
        layer_bits: Per-layer bit widths, pattern -> bits; the first matching pattern wins.
        first_layer_bits: Bits of the first quantizable layer in execution order (None: default).
        last_layer_bits: Bits of the last quantizable layer in execution order (None: default).
        scale_method: How the grid's scale is chosen: ``auto`` (default: ``full`` at 2 bits,
            ``minmax`` above), ``minmax``, ``maxabs``, ``half``, ``full`` or ``mse`` (see
            :mod:`adaround_lightning.grids`).
        act_bits: Bits of the activations feeding every quantized layer (2 to 8), None for
            float activations (see :mod:`adaround_lightning.activations`).
        act_observer: How activation ranges are calibrated: ``minmax`` or ``mse``.
    """

    weight_bits: int = 4
    per_channel: bool = True
    exclude: list[str] = field(default_factory=list)
    layer_bits: dict[str, int] = field(default_factory=dict)
    first_layer_bits: int | None = None
    last_layer_bits: int | None = None
    scale_method: str = "auto"
    act_bits: int | None = None
    act_observer: str = "minmax"

    def __post_init__(self) -> None:
        _check_bits("quant.weight_bits", self.weight_bits)
        if self.act_bits is not None:
            _check_bits("quant.act_bits", self.act_bits)
        from adaround_lightning.activations import ACT_OBSERVERS

        if self.act_observer not in ACT_OBSERVERS:
            raise ValueError(
                f"quant.act_observer must be one of {', '.join(ACT_OBSERVERS)}, "
                f"got {self.act_observer!r}"
            )
        from adaround_lightning.grids import SCALE_METHODS

        if self.scale_method not in SCALE_METHODS:
            raise ValueError(
                f"quant.scale_method must be one of {', '.join(SCALE_METHODS)}, "
                f"got {self.scale_method!r}"
            )
        self.exclude = [str(p) for p in self.exclude]
        self.layer_bits = {str(k): v for k, v in dict(self.layer_bits).items()}
        for pattern, bits in self.layer_bits.items():
            _check_bits(f"quant.layer_bits[{pattern!r}]", bits)
        for name in ("first_layer_bits", "last_layer_bits"):
            value = getattr(self, name)
            if value is not None:
                _check_bits(f"quant.{name}", value)

    def is_excluded(self, name: str) -> bool:
        """Whether the layer called ``name`` stays in float."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.exclude)

    def bits_for(self, name: str, is_first: bool, is_last: bool) -> int:
        """Bit width of the layer ``name``: explicit patterns, then first/last, then the default."""
        for pattern, bits in self.layer_bits.items():
            if fnmatch.fnmatchcase(name, pattern):
                return bits
        if is_first and self.first_layer_bits is not None:
            return self.first_layer_bits
        if is_last and self.last_layer_bits is not None:
            return self.last_layer_bits
        return self.weight_bits


@dataclass
class AdaroundConfig:
    """How each layer's rounding is optimised.

    Attributes:
        iters: Optimisation steps per layer (the paper uses 10k).
        batch_size: Calibration samples per step.
        num_samples: Calibration samples used (the first ``num_samples`` given).
        lr: Adam learning rate for ``V``.
        reg_param: lambda of eq. (25); None picks 0.01 for ``"paper"``, 0.001 for ``"mean"``.
        beta_range: Start and end of the annealed ``beta`` of eq. (24).
        warm_start: Fraction of ``iters`` without the rounding regularizer.
        reconstruction: ``"paper"`` (sum over channels, mean over the rest) or ``"mean"``.
        include_activation: Put the ReLU/ReLU6 that directly follows a layer in its target.
        seed: Seed of the calibration batches.
        forward_batch_size: Batch size of the forward passes that fill the caches.
        granularity: ``block`` (default, BRECQ-style: one fit per block, the block output
            error, all its layers' ``V`` together; layers outside blocks are still fitted one
            by one) or ``layer`` (AdaRound as published: one fit per layer, its output error).
            Block-wise kept more accuracy in BENCHMARKS.md at the same steps per layer.
        steps_per_batch: Optimizer steps per Lightning training step (manual optimization when
            > 1). Same batches, same steps, same result; Lightning's per-step overhead is paid
            once per this many steps.
        act_in_loop: With ``quant.act_bits``: calibrate each layer's input quantizer when its
            block is reached and reconstruct with quantized activations, so every layer learns
            its rounding on the inputs the fully quantized network gives it (QDrop's setting).
            Off: weights first, activation ranges calibrated afterwards (AIMET's workflow).
        block_iters: Steps of each block fit (``granularity=block``); None gives ``iters`` times
            the number of layers fitted together, the same steps per layer as layer-wise.
        drop_prob: QDrop: during an in-loop reconstruction, each input element keeps its float
            value with this probability (0: always quantized, as in BRECQ).
        bias_correction: After each layer is rounded, shift its bias by the mean per-channel
            output error of the quantized network on the calibration data
            (:mod:`adaround_lightning.bias_correction`); later layers are fitted on the
            corrected network. On by default (more accuracy at every measured W4/W3 cell of
            BENCHMARKS.md); False is AdaRound as published.
    """

    iters: int = 10000
    batch_size: int = 32
    num_samples: int = 1024
    lr: float = 1e-3
    reg_param: float | None = None
    beta_range: tuple[float, float] = (20.0, 2.0)
    warm_start: float = 0.2
    reconstruction: str = "paper"
    include_activation: bool = True
    seed: int = 0
    forward_batch_size: int = 256
    granularity: str = "block"
    steps_per_batch: int = 8
    act_in_loop: bool = False
    drop_prob: float = 0.5
    block_iters: int | None = None
    bias_correction: bool = True

    def __post_init__(self) -> None:
        if self.block_iters is not None and (
            isinstance(self.block_iters, bool)
            or not isinstance(self.block_iters, int)
            or self.block_iters < 1
        ):
            raise ValueError(
                f"adaround.block_iters must be a positive integer or null, got {self.block_iters!r}"
            )
        if not 0.0 <= self.drop_prob < 1.0:
            raise ValueError(f"adaround.drop_prob must be in [0, 1), got {self.drop_prob}")
        if self.granularity not in ("layer", "block"):
            raise ValueError(
                f"adaround.granularity must be 'layer' or 'block', got {self.granularity!r}"
            )
        for name in ("iters", "batch_size", "num_samples", "forward_batch_size", "steps_per_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"adaround.{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"adaround.lr must be > 0, got {self.lr}")
        self.beta_range = tuple(float(b) for b in self.beta_range)  # type: ignore[assignment]
        if len(self.beta_range) != 2 or min(self.beta_range) <= 0:
            raise ValueError(
                f"adaround.beta_range must be two positive numbers, got {self.beta_range}"
            )
        if not 0.0 <= self.warm_start < 1.0:
            raise ValueError(f"adaround.warm_start must be in [0, 1), got {self.warm_start}")
        if self.reconstruction not in DEFAULT_REG_PARAM:
            raise ValueError(
                f"adaround.reconstruction must be one of {sorted(DEFAULT_REG_PARAM)}, "
                f"got {self.reconstruction!r}"
            )
        if self.reg_param is not None and self.reg_param < 0:
            raise ValueError(f"adaround.reg_param must be >= 0, got {self.reg_param}")

"""Which layers are quantized and to how many bits: :class:`QuantConfig`, validated on construction.

Example:
    >>> quant = QuantConfig(weight_bits=3, per_channel=True, first_layer_bits=8)
    >>> quant.bits_for("conv1", is_first=True, is_last=False)
    8
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from adaround_lightning.quant.activations import ActObserver
from adaround_lightning.quant.grids import ASYMMETRIC_METHODS, ScaleMethod

__all__ = ["QuantConfig"]


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
        scale_method: How the grid's scale is chosen: ``auto`` (default: ``mse``, the clipping
            ratio with the least round-to-nearest error), ``minmax``, ``maxabs``, ``half``,
            ``full`` or ``mse`` (see :mod:`adaround_lightning.quant.grids`).
        act_bits: Bits of the activations feeding every quantized layer (2 to 8), None for
            float activations (see :mod:`adaround_lightning.quant.activations`).
        act_observer: How activation ranges are calibrated: ``minmax`` or ``mse``.
        act_symmetric: Signed activation grids with zero point 0 (TensorRT's only form)
            instead of unsigned ones with a zero point.
        weight_symmetric: Symmetric weight grids (zero point 0, the default) or asymmetric ones
            with an integer zero point per channel or group (as GPTQ and AutoRound store
            language models); asymmetric grids take ``scale_method`` auto, minmax or mse.
        quantize_lm_head: Quantize a language model's output projection (``lm_head``, or
            whatever ``get_output_embeddings()`` returns) too; by default it stays in float, as
            in GPTQ and AutoRound.
        quantize_embeddings: Round a language model's input embedding (``get_input_embeddings()``)
            to nearest on the same grid, before the walk; by default it stays in float, as in
            the peers. One tied to ``lm_head`` stays float (logged).
        group_size: One scale per ``group_size`` consecutive input elements of each output
            channel of a Linear weight (group-wise grids; None: per channel). Needs
            ``per_channel``; a weight it does not divide, and Conv weights, stay per channel
            (logged).
        average_bits: A budget: the mean bit width over all quantized weight elements; each
            layer's bits are then chosen from ``candidate_bits`` by measured sensitivity
            (:mod:`adaround_lightning.engine.mixed`). None: no average budget.
        max_size_mb: A budget on the model's weight size in MB (10^6 bytes): quantized weights
            at their bits, their scales and every parameter left in float at 32 bits.
        candidate_bits: The bit widths a budget chooses from.
    """

    weight_bits: int = 4
    per_channel: bool = True
    exclude: list[str] = field(default_factory=list)
    layer_bits: dict[str, int] = field(default_factory=dict)
    first_layer_bits: int | None = None
    last_layer_bits: int | None = None
    scale_method: ScaleMethod = ScaleMethod.AUTO
    act_bits: int | None = None
    act_observer: ActObserver = ActObserver.MINMAX
    act_symmetric: bool = False
    group_size: int | None = None
    weight_symmetric: bool = True
    quantize_lm_head: bool = False
    quantize_embeddings: bool = False
    average_bits: float | None = None
    max_size_mb: float | None = None
    candidate_bits: list[int] = field(default_factory=lambda: [2, 3, 4, 8])

    def __post_init__(self) -> None:
        self._check_budget()
        if self.group_size is not None:
            size = self.group_size
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"quant.group_size must be a positive integer, got {size!r}")
            if not self.per_channel:
                raise ValueError(
                    "quant.group_size needs per-channel grids: set quant.per_channel=true "
                    "(or quant.group_size=null)"
                )
        _check_bits("quant.weight_bits", self.weight_bits)
        for name in ("weight_symmetric", "quantize_lm_head", "quantize_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"quant.{name} must be true or false, got {getattr(self, name)!r}")
        if self.act_bits is not None:
            _check_bits("quant.act_bits", self.act_bits)
        self.act_observer = ActObserver.parse(self.act_observer, "quant.act_observer")
        self.scale_method = ScaleMethod.parse(self.scale_method, "quant.scale_method")
        if not self.weight_symmetric and self.scale_method not in ASYMMETRIC_METHODS:
            raise ValueError(
                f"quant.scale_method={self.scale_method.value} places a symmetric grid; with "
                "quant.weight_symmetric=false use auto, minmax or mse"
            )
        self.exclude = [str(p) for p in self.exclude]
        self.layer_bits = {str(k): v for k, v in dict(self.layer_bits).items()}
        for pattern, bits in self.layer_bits.items():
            _check_bits(f"quant.layer_bits[{pattern!r}]", bits)
        for name in ("first_layer_bits", "last_layer_bits"):
            value = getattr(self, name)
            if value is not None:
                _check_bits(f"quant.{name}", value)

    def _check_budget(self) -> None:
        for name in ("average_bits", "max_size_mb"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"quant.{name} must be a positive number or null, got {value!r}")
            setattr(self, name, float(value))
        candidates = list(self.candidate_bits)
        if not candidates:
            raise ValueError(
                "quant.candidate_bits must list at least one bit width, e.g. [2,3,4,8]"
            )
        for bits in candidates:
            _check_bits("quant.candidate_bits[]", bits)
        self.candidate_bits = sorted(set(candidates))

    @property
    def has_budget(self) -> bool:
        """Whether each layer's bits are chosen under ``average_bits`` / ``max_size_mb``."""
        return self.average_bits is not None or self.max_size_mb is not None

    def is_excluded(self, name: str) -> bool:
        """Whether the layer called ``name`` stays in float."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.exclude)

    def bits_for(self, name: str, is_first: bool, is_last: bool) -> int:
        """Bit width of the layer ``name``: explicit patterns, then first/last, then the default."""
        explicit = self.explicit_bits_for(name, is_first, is_last)
        return self.weight_bits if explicit is None else explicit

    def explicit_bits_for(self, name: str, is_first: bool, is_last: bool) -> int | None:
        """The bits ``layer_bits`` or the first/last-layer rule set for ``name``, else None.

        Under a budget these layers keep their bits (and count against it); the others are
        chosen from ``candidate_bits``.
        """
        for pattern, bits in self.layer_bits.items():
            if fnmatch.fnmatchcase(name, pattern):
                return bits
        if is_first and self.first_layer_bits is not None:
            return self.first_layer_bits
        if is_last and self.last_layer_bits is not None:
            return self.last_layer_bits
        return None

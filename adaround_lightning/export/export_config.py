"""What a run exports, and for which runtime: :class:`ExportConfig`.

The ONNX file's weight containers follow the bits: at opset 21 or newer a weight of at most 4
bits is stored as an ``INT4`` initializer (``UINT4`` where its grid is unsigned), two integers a
byte, behind a per-axis ``DequantizeLinear``; wider weights, and every weight at older opsets or
with ``container=int8``, as ``INT8``. The target fixes what a runtime accepts:

* ``generic``: onnxruntime (and any ONNX runtime with opset-21 ``DequantizeLinear``);
* ``tensorrt``: TensorRT's explicit quantization, symmetric signed ``INT8`` Q/DQ only (zero
  point 0) on weights and 8-bit activations;
* ``qnn``: Qualcomm QNN / AIMET: ``encodings.json`` keyed by the tensor names of ``model.onnx``
  (what ``qnn-onnx-converter --quantization_overrides`` and aimet-onnx read).
"""

from __future__ import annotations

from dataclasses import dataclass

from adaround_lightning.core.choices import Choice
from adaround_lightning.core.errors import UserError

__all__ = [
    "INT4_OPSET",
    "MAX_INT4_BITS",
    "ExportConfig",
    "ExportTarget",
    "WeightContainer",
    "check_target",
]

#: The first opset whose ``DequantizeLinear`` reads ``INT4``/``UINT4`` (and ``block_size``).
INT4_OPSET = 21
#: Weights of at most this many bits fit a 4-bit container.
MAX_INT4_BITS = 4


class WeightContainer(Choice):
    """How the integers of a weight are stored in ``model.onnx`` (``export.container``)."""

    #: ``INT4``/``UINT4`` for weights of at most 4 bits at opset 21 or newer, else ``INT8``.
    AUTO = "auto"
    #: ``INT8`` for every weight (the form before 4-bit containers, any opset from 13).
    INT8 = "int8"


class ExportTarget(Choice):
    """The runtime ``model.onnx`` and ``encodings.json`` are written for (``export.target``)."""

    GENERIC = "generic"
    TENSORRT = "tensorrt"
    QNN = "qnn"


@dataclass
class ExportConfig:
    """What a run exports besides ``quantized_model.pt``.

    Attributes:
        onnx: Write ``model.onnx`` (integer weights through ``DequantizeLinear``) and evaluate
            it with onnxruntime.
        opset: ONNX opset (13 or newer: per-axis ``DequantizeLinear``; 21 or newer: 4-bit
            containers). The graph is exported at opset 20 at most and converted upwards.
        container: ``auto`` (4-bit containers where the bits and the opset allow) or ``int8``.
        target: ``generic``, ``tensorrt`` or ``qnn`` (:class:`ExportTarget`).
        verify: Run the grid check on the written files at the end of the run.
        compressed_tensors: Write ``compressed_tensors/``, a Hugging Face checkpoint in the
            compressed-tensors ``pack-quantized`` format that ``transformers`` and vLLM load
            (``transformers`` models' Linear weights; the causal_lm recipe turns it on).
        zero_points: How that checkpoint lays out an asymmetric grid's zero points: ``packed``
            (the format's own, what vLLM reads) or ``padded`` (what ``transformers`` 5 with
            compressed-tensors 0.20 loads; see :mod:`adaround_lightning.export.compressed_tensors`).

    Example:
        >>> ExportConfig().int4_weights(bits=3, target_allows=True)
        True
        >>> ExportConfig(opset=17).int4_weights(bits=3, target_allows=True)
        False
    """

    onnx: bool = True
    opset: int = INT4_OPSET
    container: WeightContainer = WeightContainer.AUTO
    target: ExportTarget = ExportTarget.GENERIC
    verify: bool = True
    compressed_tensors: bool = False
    zero_points: str = "packed"

    def __post_init__(self) -> None:
        if self.zero_points not in ("packed", "padded"):
            raise UserError(
                f"export.zero_points must be packed or padded, got {self.zero_points!r}"
            )
        self.container = WeightContainer.parse(self.container, "export.container")
        self.target = ExportTarget.parse(self.target, "export.target")
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or self.opset < 13:
            raise UserError(
                f"export.opset must be >= 13 (per-axis DequantizeLinear), got {self.opset}"
            )

    def int4_weights(self, bits: int, target_allows: bool | None = None) -> bool:
        """Whether a ``bits``-bit weight is stored in a 4-bit container.

        ``target_allows`` defaults to the target's rule: TensorRT reads ``INT8`` weights only
        (its 4-bit weights are block-wise MatMul weights with float activations).
        """
        if target_allows is None:
            target_allows = self.target != ExportTarget.TENSORRT
        return (
            target_allows
            and self.container == WeightContainer.AUTO
            and self.opset >= INT4_OPSET
            and bits <= MAX_INT4_BITS
        )


def check_target(
    config: ExportConfig, act_bits: int | None, act_symmetric: bool, group_size: int | None = None
) -> None:
    """Refuse, before calibration, settings that ``config.target`` cannot represent.

    Args:
        config: The export settings.
        act_bits: ``quant.act_bits`` (None: float activations).
        act_symmetric: ``quant.act_symmetric``.
        group_size: ``quant.group_size`` (block-wise ``DequantizeLinear``: opset 21 or newer).

    Raises:
        UserError: One line naming the setting to change.

    Example:
        >>> check_target(ExportConfig(target="tensorrt"), 8, act_symmetric=True)
    """
    if group_size is not None and config.onnx and config.opset < INT4_OPSET:
        raise UserError(
            f"quant.group_size needs block-wise DequantizeLinear, opset {INT4_OPSET} or newer: "
            f"set export.opset={INT4_OPSET} (got {config.opset}) or export.onnx=false"
        )
    if group_size is not None and config.target == ExportTarget.TENSORRT:
        raise UserError(
            "export.target=tensorrt: its int8 weights are per channel or per tensor only; "
            "set quant.group_size=null"
        )
    if config.target != ExportTarget.TENSORRT or act_bits is None:
        return
    if act_bits != 8:
        raise UserError(
            f"export.target=tensorrt: TensorRT quantizes activations to 8 bits only, not "
            f"quant.act_bits={act_bits}; set quant.act_bits=8 (or null for float activations)"
        )
    if not act_symmetric:
        raise UserError(
            "export.target=tensorrt: TensorRT reads symmetric int8 activation grids only "
            "(zero point 0); add quant.act_symmetric=true"
        )

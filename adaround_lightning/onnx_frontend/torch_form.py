"""Each ONNX layer as a PyTorch ``Conv``/``Linear`` for the project's quantizer, loss and fit.

The module holds the weight in PyTorch's layout (output channels first) and computes what the
node computes on an input that :meth:`TorchForm.prepare` has brought into shape once:

* ``Conv``: strides, dilations, groups and the bias as attributes; symmetric ``pads`` as the
  module's padding; asymmetric pads and ``auto_pad=SAME_*`` as zero padding of the cached input;
* ``Gemm``: ``alpha`` scales the input, ``beta * C`` is the bias, ``transB`` picks the layout;
* ``MatMul`` with a ``(K, N)`` initializer: a ``Linear`` without bias, weight ``B^T``.

``transposed`` says the ONNX initializer is ``W^T`` of the module's weight (Gemm ``transB=0``,
MatMul): the export writes the integers back in that layout, scales along axis 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adaround_lightning.onnx_frontend.onnx_graph import OnnxLayer

__all__ = ["TorchForm", "activation_module", "torch_form"]


class _HardSigmoid(nn.Module):
    """ONNX ``HardSigmoid``: ``max(0, min(1, alpha x + beta))``."""

    def __init__(self, alpha: float, beta: float) -> None:
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.alpha * x + self.beta, 0.0, 1.0)


def activation_module(op_type: str | None, attributes: dict[str, Any]) -> nn.Module | None:
    """The PyTorch module of an ONNX activation (:data:`~.graph.ACTIVATION_OPS`), or None.

    Example:
        >>> activation_module("Clip", {"min": 0.0, "max": 6.0})
        Hardtanh(min_val=0.0, max_val=6.0)
    """
    if op_type is None:
        return None
    if op_type == "Relu":
        return nn.ReLU()
    if op_type == "Clip":
        return nn.Hardtanh(attributes["min"], attributes["max"])
    if op_type == "LeakyRelu":
        return nn.LeakyReLU(attributes.get("alpha", 0.01))
    if op_type == "Sigmoid":
        return nn.Sigmoid()
    if op_type == "HardSigmoid":
        return _HardSigmoid(attributes.get("alpha", 0.2), attributes.get("beta", 0.5))
    if op_type == "HardSwish":
        return nn.Hardswish()
    if op_type == "Gelu":
        return nn.GELU(approximate=attributes.get("approximate", "none"))
    raise ValueError(f"no PyTorch form of the activation {op_type}")


@dataclass
class TorchForm:
    """A layer's PyTorch module and how its cached input is prepared.

    Attributes:
        module: ``nn.Conv{1,2,3}d`` or ``nn.Linear`` with the node's float weight and bias.
        transposed: The ONNX weight is the transpose of ``module.weight``.
        pads: Zero padding of the input, in ``F.pad`` order (last axis first), or None.
        input_scale: Gemm's ``alpha`` (the input is scaled by it), else 1.
        bias_scale: Gemm's ``beta`` (the ONNX ``C`` is ``bias / beta``), else 1.
    """

    module: nn.Module
    transposed: bool = False
    pads: tuple[int, ...] | None = None
    input_scale: float = 1.0
    bias_scale: float = 1.0

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The node's input as the module reads it (padded, scaled)."""
        if self.pads is not None:
            x = F.pad(x, self.pads)
        return x * self.input_scale if self.input_scale != 1.0 else x

    def onnx_weight(self, weight: torch.Tensor) -> np.ndarray:
        """A module-layout weight in the ONNX initializer's layout."""
        array = weight.detach().cpu().numpy()
        return np.ascontiguousarray(array.T if self.transposed else array)

    def onnx_bias(self) -> np.ndarray | None:
        """The module's bias as the ONNX bias initializer holds it (``C = bias / beta``)."""
        bias = getattr(self.module, "bias", None)
        if bias is None:
            return None
        return (bias.detach().cpu().double() / self.bias_scale).float().numpy()


def _same_pads(auto_pad: str, sizes: list[int], attrs: dict[str, Any]) -> list[int]:
    """ONNX ``pads`` (begins then ends) of ``auto_pad=SAME_UPPER/SAME_LOWER``."""
    kernel, rank = attrs["kernel_shape"], len(sizes)
    strides = attrs.get("strides", [1] * rank)
    dilations = attrs.get("dilations", [1] * rank)
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations, strict=True):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def _conv(layer: OnnxLayer, weight: np.ndarray, bias: np.ndarray | None, sizes: list[int]) -> Any:
    attrs, rank = layer.attributes, weight.ndim - 2
    attrs = {"kernel_shape": list(weight.shape[2:]), **attrs}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "VALID":
        pads = [0] * (2 * rank)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(auto_pad, sizes, attrs)
    else:
        pads = list(attrs.get("pads", [0] * (2 * rank)))
    groups = attrs.get("group", 1)
    conv_type = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[rank - 1]
    module = conv_type(
        weight.shape[1] * groups,
        weight.shape[0],
        tuple(weight.shape[2:]),
        stride=tuple(attrs.get("strides", [1] * rank)),
        padding=tuple(pads[:rank]) if pads[:rank] == pads[rank:] else 0,
        dilation=tuple(attrs.get("dilations", [1] * rank)),
        groups=groups,
        bias=bias is not None,
    )
    extra = None
    if pads[:rank] != pads[rank:]:
        extra = tuple(p for axis in reversed(range(rank)) for p in (pads[axis], pads[rank + axis]))
    return module, extra


def torch_form(
    layer: OnnxLayer, initializers: dict[str, np.ndarray], input_shape: list[int]
) -> TorchForm:
    """The PyTorch module that computes ``layer`` (float weights copied from the graph).

    Args:
        layer: The ONNX layer.
        initializers: The graph's initializers.
        input_shape: The shape of the node's input on the calibration data ``(N, C, ...)``.

    Example:
        >>> from adaround_lightning.onnx_frontend.onnx_graph import OnnxLayer
        >>> w = {"w": np.ones((4, 3), np.float32)}
        >>> form = torch_form(OnnxLayer("fc", "MatMul", 0, "x", "y", "w", None, {}), w, [2, 4])
        >>> tuple(form.module.weight.shape), form.transposed
        ((3, 4), True)
    """
    weight = initializers[layer.weight]
    bias = initializers[layer.bias].reshape(-1) if layer.bias is not None else None
    form = TorchForm(nn.Identity())
    if layer.op_type == "Conv":
        module, form.pads = _conv(layer, weight, bias, list(input_shape[2:]))
        torch_weight = weight
    else:
        gemm = layer.op_type == "Gemm"
        form.transposed = not (gemm and layer.attributes.get("transB", 0))
        torch_weight = weight.T if form.transposed else weight
        if gemm:
            form.input_scale = float(layer.attributes.get("alpha", 1.0))
            form.bias_scale = float(layer.attributes.get("beta", 1.0))
        module = nn.Linear(torch_weight.shape[1], torch_weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        module.weight.copy_(torch.tensor(np.ascontiguousarray(torch_weight)))
        if bias is not None:
            module.bias.copy_(torch.from_numpy(bias.astype(np.float64) * form.bias_scale))
    form.module = module.eval().requires_grad_(False)
    return form

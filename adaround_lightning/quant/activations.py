"""Activation quantization: a calibrated fake-quantizer on the input of every quantized layer.

Each quantized Conv/Linear layer gets an :class:`ActivationQuantizer` on its (first) input:
asymmetric, per tensor, unsigned ``b``-bit integers with a zero point,

    q = clamp(round(x / s) + z, 0, 2**b - 1),        x^ = s * (q - z),

so post-ReLU inputs (``min = 0``) use every level and signed inputs (the network input, linear
bottlenecks) are covered too. The range always contains 0, so zero padding is exact.
``symmetric=True`` (``quant.act_symmetric``, what TensorRT requires) gives signed integers with
zero point 0 instead: ``q = clamp(round(x / s), -2**(b-1), 2**(b-1) - 1)``,
``s = max(|min|, |max|) / (2**(b-1) - 1)``.

Ranges are calibrated on the calibration images (``quant.act_observer``):

* ``minmax``: the observed minimum and maximum (AIMET's ``tf`` scheme);
* ``mse``: the range ``alpha * [min, max]`` with ``alpha`` from a grid in ``[0.3, 1]``
  minimising the fake-quantization MSE of the observed values (helps at 4 bits).

The quantizer runs as a forward pre-hook of its layer (attached with
:func:`attach_input_quantizers`), so evaluation, block reconstruction and the ONNX export (a
``QuantizeLinear``/``DequantizeLinear`` pair, behind a ``Clip`` below 8 bits) all see it. Its
buffers are not persistent: ``state_dict`` stays loadable into the plain architecture, and the
exports carry the activation grids separately.

QDrop (Wei et al. 2022): during a reconstruction, ``drop_prob > 0`` keeps each element's float
value with that probability instead of its quantized one.

Example:
    >>> aq = ActivationQuantizer(bits=8)
    >>> aq.observe(torch.linspace(0, 2.55, 100))
    >>> aq.calibrate("minmax")
    >>> float(aq.scale), int(aq.zero_point)
    (0.009999999776482582, 0)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from adaround_lightning.core.choices import Choice
from adaround_lightning.core.distributed import ProcessContext, all_reduce_max, all_reduce_sum

__all__ = [
    "ACT_OBSERVERS",
    "ActObserver",
    "ActivationQuantizer",
    "attach_input_quantizers",
    "calibrate_input_quantizers",
    "detach_input_quantizers",
    "input_quantizers_of",
    "observe_inputs",
]


class ActObserver(Choice):
    """How an activation range is calibrated (``quant.act_observer``)."""

    MINMAX = "minmax"
    MSE = "mse"


#: The words of :class:`ActObserver`.
ACT_OBSERVERS = ActObserver.words()

#: Elements kept per observed batch for the MSE search (drawn at random, with replacement).
_SAMPLES_PER_BATCH = 8192
#: Seed of those draws: batch ``k`` of an observer uses ``_SAMPLE_SEED + k`` (reproducible).
_SAMPLE_SEED = 20_040_568
#: Clipping ratios tried by the MSE observer.
_MSE_ALPHAS = torch.linspace(0.3, 1.0, 36)
_HOOK_ATTR = "_input_quantizer_hook"


class ActivationQuantizer(nn.Module):
    """Asymmetric per-tensor fake quantization of a layer input to ``bits`` bits.

    Args:
        bits: Bit width, 2 to 8 (integers ``0 .. 2**bits - 1``).
        symmetric: Signed integers ``-2**(bits-1) .. 2**(bits-1) - 1`` with zero point 0.

    Attributes:
        scale: The step ``s`` (float32 scalar).
        zero_point: The integer ``z`` that represents 0 (int32 scalar).
        drop_prob: QDrop's probability of keeping an element in float (0: always quantized).

    Example:
        >>> aq = ActivationQuantizer(4)
        >>> aq.set_range(-1.0, 2.0)
        >>> aq(torch.tensor([-5.0, 0.0, 0.15, 5.0])).tolist()
        [-1.0, 0.0, 0.20000000298023224, 2.0]
    """

    def __init__(self, bits: int, symmetric: bool = False) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"activation bits must be an integer from 2 to 8, got {bits!r}")
        self.bits = bits
        self.symmetric = bool(symmetric)
        self.quant_min = -(2 ** (bits - 1)) if symmetric else 0
        self.quant_max = 2 ** (bits - 1) - 1 if symmetric else 2**bits - 1
        self.drop_prob = 0.0
        self.register_buffer("scale", torch.tensor(1.0), persistent=False)
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32), persistent=False)
        self.register_buffer("observed_min", torch.tensor(float("inf")), persistent=False)
        self.register_buffer("observed_max", torch.tensor(float("-inf")), persistent=False)
        self.samples: list[torch.Tensor] = []
        self.calibrated = False

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Record the range of ``x`` (and a random subsample of it for the MSE search).

        The subsample is drawn uniformly over all elements with a seeded generator: a strided
        one can land on the same pixel of every channel when the stride divides ``H * W``.
        """
        flat = x.detach().float().reshape(-1)
        self.observed_min = torch.minimum(self.observed_min, flat.min())
        self.observed_max = torch.maximum(self.observed_max, flat.max())
        if flat.numel() <= _SAMPLES_PER_BATCH:
            self.samples.append(flat.clone())
            return
        generator = torch.Generator(device=flat.device)
        generator.manual_seed(_SAMPLE_SEED + len(self.samples))
        index = torch.randint(
            0, flat.numel(), (_SAMPLES_PER_BATCH,), generator=generator, device=flat.device
        )
        self.samples.append(flat[index])

    def _qparams(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The range must contain 0 (exact zero padding); a zero-width range gets a unit step.
        low, high = torch.clamp(low, max=0.0), torch.clamp(high, min=0.0)
        if self.symmetric:  # zero point 0: the larger side sets the step
            scale = torch.maximum(-low, high) / self.quant_max
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            return scale.float(), torch.zeros_like(scale, dtype=torch.int32)
        scale = (high - low) / self.quant_max
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero_point = torch.clamp(torch.round(-low / scale), 0, self.quant_max)
        return scale.float(), zero_point.to(torch.int32)

    @torch.no_grad()
    def set_range(self, low: float | torch.Tensor, high: float | torch.Tensor) -> None:
        """Set the grid so that it covers ``[low, high]`` (extended to contain 0)."""
        low_t = torch.as_tensor(low, dtype=torch.float32, device=self.scale.device)
        high_t = torch.as_tensor(high, dtype=torch.float32, device=self.scale.device)
        scale, zero_point = self._qparams(low_t, high_t)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)
        self.calibrated = True

    @torch.no_grad()
    def calibrate(
        self, method: ActObserver | str = "minmax", context: ProcessContext | None = None
    ) -> None:
        """Set the grid from what :meth:`observe` saw, then forget the observations.

        Under DDP (``context``) the minimum, the maximum and the MSE of every candidate range
        are reduced over the processes, so every process gets the same grid.
        """
        method = ActObserver.parse(method, "act_observer")
        if not self.samples:
            raise RuntimeError("observe some inputs before calibrating")
        low, high = self.observed_min.clone(), self.observed_max.clone()
        if context is not None:
            low = -all_reduce_max(-low, context)
            high = all_reduce_max(high, context)
        if not (torch.isfinite(low) and torch.isfinite(high)):
            raise ValueError("non-finite activations in the calibration data")
        if method == "mse":
            samples = torch.cat(self.samples)
            alphas = _MSE_ALPHAS.to(samples.device)
            errors = torch.stack(
                [
                    (self._fake_quant(samples, *self._qparams(a * low, a * high)) - samples)
                    .double()
                    .pow(2)
                    .sum()
                    for a in alphas
                ]
            )
            if context is not None:
                errors = all_reduce_sum(errors, context)
            best = alphas[int(torch.argmin(errors))]
            low, high = best * low, best * high
        self.set_range(low, high)
        self.samples = []
        self.observed_min.fill_(float("inf"))
        self.observed_max.fill_(float("-inf"))

    def _fake_quant(
        self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
    ) -> torch.Tensor:
        if self.bits < 8:
            # torch's fake-quant op takes 8-bit ranges; clamp first to the b-bit range (this
            # exports as Clip -> QuantizeLinear -> DequantizeLinear, equal to the b-bit grid).
            low = (self.quant_min - zero_point) * scale
            x = torch.clamp(x, low, (self.quant_max - zero_point) * scale)
        # (-128, 127) exports as an int8 QuantizeLinear, (0, 255) as a uint8 one.
        wide = (-128, 127) if self.symmetric else (0, 255)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, *wide)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x^`` (straight-through gradient inside the range); identity until calibrated."""
        if not self.calibrated:
            return x
        quantized = self._fake_quant(x, self.scale, self.zero_point)
        if self.drop_prob > 0:
            keep_float = torch.rand_like(x) < self.drop_prob
            return torch.where(keep_float, x, quantized)
        return quantized

    def integer_range(self) -> tuple[float, float]:
        """Float values of the end integers: ``s (q_min - z)`` and ``s (q_max - z)``."""
        scale, zero = float(self.scale), int(self.zero_point)
        return scale * (self.quant_min - zero), scale * (self.quant_max - zero)

    def extra_repr(self) -> str:
        kind = ", symmetric" if self.symmetric else ""
        return f"bits={self.bits}{kind}, calibrated={self.calibrated}"


def _quantize_first_input(module: nn.Module, args: tuple) -> tuple:
    # A module-level function (not a closure), so deep copies of the model keep working.
    return (module.input_quantizer(args[0]), *args[1:])


def attach_input_quantizers(model: nn.Module, quantizers: dict[str, ActivationQuantizer]) -> None:
    """Quantize the first input of each named layer of ``model`` with its quantizer.

    The quantizer becomes the layer's ``input_quantizer`` submodule (its buffers are not in the
    ``state_dict``) and runs as a forward pre-hook. Attaching again replaces the old one.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> aq = ActivationQuantizer(8)
        >>> aq.set_range(0.0, 1.0)
        >>> attach_input_quantizers(net, {"0": aq})
        >>> list(input_quantizers_of(net))
        ['0']
    """
    for name, quantizer in quantizers.items():
        layer = model.get_submodule(name)
        detach_input_quantizers(model, [name])
        layer.input_quantizer = quantizer.to(_device_of(layer))
        setattr(layer, _HOOK_ATTR, layer.register_forward_pre_hook(_quantize_first_input))


def detach_input_quantizers(model: nn.Module, names: Iterable[str] | None = None) -> None:
    """Remove the input quantizers of the named layers (all of them when ``names`` is None)."""
    for name in list(input_quantizers_of(model)) if names is None else names:
        layer = model.get_submodule(name)
        handle = getattr(layer, _HOOK_ATTR, None)
        if handle is not None:
            handle.remove()
            delattr(layer, _HOOK_ATTR)
        if "input_quantizer" in layer._modules:
            del layer._modules["input_quantizer"]


def input_quantizers_of(model: nn.Module) -> dict[str, ActivationQuantizer]:
    """The attached input quantizers of ``model``, by layer name."""
    return {
        name: module.input_quantizer
        for name, module in model.named_modules()
        if isinstance(getattr(module, "input_quantizer", None), ActivationQuantizer)
    }


def _device_of(module: nn.Module) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@torch.no_grad()
def observe_inputs(
    model: nn.Module,
    quantizers: dict[str, ActivationQuantizer],
    data: torch.Tensor,
    chunk: int = 256,
) -> None:
    """Run ``model`` over ``data`` in chunks while each named layer's quantizer observes its input.

    Input quantizers already attached to ``model`` stay active, so a layer observes what the
    (partly) quantized network feeds it.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> aq = ActivationQuantizer(8)
        >>> observe_inputs(net, {"2": aq}, torch.randn(16, 2))
        >>> aq.calibrate()
        >>> int(aq.zero_point)
        0
    """
    handles = []
    for name, quantizer in quantizers.items():

        def hook(
            _module: nn.Module, args: tuple, quantizer: ActivationQuantizer = quantizer
        ) -> None:
            quantizer.observe(args[0])

        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        for start in range(0, data.shape[0], chunk):
            model(data[start : start + chunk])
    finally:
        for handle in handles:
            handle.remove()


def calibrate_input_quantizers(
    model: nn.Module,
    names: Iterable[str],
    data: torch.Tensor,
    bits: int,
    observer: str = "minmax",
    chunk: int = 256,
    context: ProcessContext | None = None,
    symmetric: bool = False,
) -> dict[str, ActivationQuantizer]:
    """Calibrate and attach ``bits``-bit input quantizers to the named layers of ``model``.

    One pass over ``data`` observes every layer's float input (the weights as ``model`` holds
    them); the ranges come from ``observer``; the quantizers are then attached.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> aqs = calibrate_input_quantizers(net, ["0", "2"], torch.randn(32, 2), bits=8)
        >>> sorted(input_quantizers_of(net))
        ['0', '2']
    """
    device = data.device
    quantizers = {name: ActivationQuantizer(bits, symmetric).to(device) for name in names}
    observe_inputs(model, quantizers, data, chunk)
    for quantizer in quantizers.values():
        quantizer.calibrate(observer, context)
    attach_input_quantizers(model, quantizers)
    return quantizers

"""Weights used functionally: found in one forward pass, and routed through their modules.

Some modules hand a child layer's weight to a function instead of calling the layer: torchvision's
Swin attention calls ``F.linear(x, self.qkv.weight, self.qkv.bias)``. No hook on ``qkv`` fires,
so the layer is invisible to the trace and to the activation cache, and it would stay in float.

* :func:`functional_weight_uses` runs one forward pass under a ``TorchFunctionMode`` that sees
  every ``F.linear``/``F.conv*``/matmul and, with a stack of the modules being executed, tells
  which weights reach one without their own module being called.
* :func:`route_functional_weights` gives each module that does this to its own child layers a
  pair of hooks: during its forward, ``F.linear(x, child.weight, child.bias)`` (or the matching
  ``F.conv*``) is computed as ``child(x)``, the same function, so hooks see it and quantized
  weights take effect. The hooks are plain picklable objects; the model's code is unchanged.

Weights that cannot be routed (a bare ``nn.Parameter`` used in ``F.linear``, a weight shared with
another module) are returned with the reason, and the coverage lists them as left in float.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from adaround_lightning.graph.trace import QUANTIZABLE_TYPES

__all__ = ["FunctionalUse", "functional_weight_uses", "route_functional_weights"]

log = logging.getLogger(__name__)

_LAYERS = QUANTIZABLE_TYPES  # the layers whose weights are quantized: Linear and Conv1d/2d/3d
_CONVS = {F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, F.conv3d: nn.Conv3d}
_MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.bmm}
_WEIGHTED_OPS = {F.linear, *_CONVS, *_MATMULS}


@dataclass(frozen=True)
class FunctionalUse:
    """A weight that reached a linear map or a convolution without its module being called.

    Attributes:
        weight: Qualified parameter name, e.g. ``features.1.0.attn.qkv.weight``.
        owner: The innermost module running when it was used (``""``: the model's forward).
        layer: The Linear/Conv module the weight belongs to, or None for a bare parameter.
        op: The function it was passed to, e.g. ``linear``.
    """

    weight: str
    owner: str
    layer: str | None
    op: str

    @property
    def routable(self) -> bool:
        """The weight's layer is inside the module that uses it: its call can be routed."""
        return (
            self.layer is not None
            and self.op in ("linear", "conv1d", "conv2d", "conv3d")
            and (self.owner == "" or self.layer.startswith(self.owner + "."))
        )


def _arguments(args: tuple, kwargs: dict) -> tuple[torch.Tensor, object, object | None]:
    x = args[0] if args else kwargs.get("input")
    weight = args[1] if len(args) > 1 else kwargs.get("weight", kwargs.get("other"))
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    return x, weight, bias


class _UseRecorder(TorchFunctionMode):
    """Records weighted ops whose weight is a parameter of the model not called as a module."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.parameters = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self.layer_of = {
            id(m.weight): n for n, m in model.named_modules() if isinstance(m, _LAYERS)
        }
        self.running: list[str] = []
        self.uses: dict[str, FunctionalUse] = {}

    def __torch_function__(
        self, func: Callable[..., Any], types: tuple, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in _WEIGHTED_OPS:
            for operand in _arguments(args, kwargs)[:2]:
                self._note(func, operand)
        return func(*args, **kwargs)

    def stack_hooks(self, name: str) -> tuple:
        """A pre-hook that pushes ``name`` on the stack of running modules, a hook that pops it."""

        def push(*_: object) -> None:
            self.running.append(name)

        def pop(*_: object) -> None:
            self.running.pop()

        return push, pop

    def _note(self, func: object, operand: object) -> None:
        name = self.parameters.get(id(operand))
        if name is None or operand.dim() < 2 or name in self.uses:  # type: ignore[attr-defined]
            return
        layer = self.layer_of.get(id(operand))
        current = self.running[-1] if self.running else ""
        if layer is not None and layer == current:
            return  # the layer's own call
        op = getattr(func, "__name__", str(func)).strip("_")
        self.uses[name] = FunctionalUse(name, current, layer, op)


def functional_weight_uses(model: nn.Module, example_input: torch.Tensor) -> list[FunctionalUse]:
    """Every weight of ``model`` that a linear map, convolution or matmul uses functionally.

    Example:
        >>> class Gate(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.proj = nn.Linear(4, 4)
        ...     def forward(self, x):
        ...         return F.linear(x, self.proj.weight, self.proj.bias)
        >>> uses = functional_weight_uses(Gate(), torch.ones(1, 4))
        >>> [(use.weight, use.owner, use.routable) for use in uses]
        [('proj.weight', '', True)]
    """
    recorder = _UseRecorder(model)
    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(recorder.stack_hooks(name)[0]))
        handles.append(
            module.register_forward_hook(recorder.stack_hooks(name)[1], always_call=True)
        )
    try:
        with torch.no_grad(), recorder:
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return list(recorder.uses.values())


def _same_conv(child: nn.Module, func: object, args: tuple, kwargs: dict) -> bool:
    """``func(x, w, b, *rest)`` is exactly ``child``'s own convolution."""
    if not isinstance(child, _CONVS[func]) or child.padding_mode != "zeros":  # type: ignore[index]
        return False
    names = ("stride", "padding", "dilation", "groups")
    given = dict(zip(names, args[3:], strict=False)) | {k: kwargs[k] for k in names if k in kwargs}
    default = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    for key in names:
        value = given.get(key, default[key])
        expected = getattr(child, key)
        if isinstance(value, str) or isinstance(expected, str):
            if value != expected:
                return False
        elif tuple(torch.nn.modules.utils._ntuple(len(child.kernel_size))(value)) != tuple(
            torch.nn.modules.utils._ntuple(len(child.kernel_size))(expected)
        ):
            return False
    return True


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    # Under the ONNX exporter's trace the answer is fixed at export time, which is right here:
    # which layer a call belongs to does not depend on the input.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return a.shape == b.shape and torch.equal(a, b)


#: The code of the layers' own forward methods: a call from there is the layer's own call.
_OWN_CALLS = {nn.Linear.forward.__code__, *(c._conv_forward.__code__ for c in _CONVS.values())}


class _RouteToLayers(TorchFunctionMode):
    """During one module's forward: ``F.linear(x, child.weight, child.bias)`` -> ``child(x)``."""

    def __init__(self, owner: nn.Module) -> None:
        super().__init__()
        # Looked up per call: torch.func.functional_call swaps the weights in and out.
        self.layers = [m for m in owner.modules() if isinstance(m, _LAYERS) and m is not owner]

    def __torch_function__(
        self, func: Callable[..., Any], types: tuple, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        # A layer called as a module reaches here from its own forward: leave that call alone.
        if (func is F.linear or func in _CONVS) and sys._getframe(1).f_code not in _OWN_CALLS:
            x, weight, bias = _arguments(args, kwargs)
            for layer in self.layers:
                if layer.weight is not weight:
                    continue
                same_bias = bias is layer.bias or (
                    bias is not None and layer.bias is not None and _equal(bias, layer.bias)
                )
                if same_bias and (func is F.linear or _same_conv(layer, func, args, kwargs)):
                    return layer(x)
        return func(*args, **kwargs)


class FunctionalRouting:
    """The pair of hooks that runs a module's forward under :class:`_RouteToLayers`."""

    def __init__(self) -> None:
        self.active: list[_RouteToLayers] = []

    def enter(self, module: nn.Module, _args: tuple) -> None:
        mode = _RouteToLayers(module)
        mode.__enter__()
        self.active.append(mode)

    def leave(self, _module: nn.Module, _args: tuple, _output: object) -> None:
        self.active.pop().__exit__(None, None, None)

    def __getstate__(self) -> dict:
        return {"active": []}


def _swin_v2_key_bias(model: nn.Module) -> None:
    """Swin V2 zeroes the key third of ``qkv.bias`` in every call: zero it once, for good."""
    for module in model.modules():
        if type(module).__name__ == "ShiftedWindowAttentionV2" and module.qkv.bias is not None:
            length = module.qkv.bias.numel() // 3
            with torch.no_grad():
                module.qkv.bias[length : 2 * length].zero_()


def route_functional_weights(model: nn.Module, example_input: torch.Tensor) -> list[FunctionalUse]:
    """Route the functional uses of child layers' weights through the layers; return the rest.

    Args:
        model: The network (changed in place: hooks on the modules that use weights
            functionally).
        example_input: A small batch.

    Returns:
        The uses that could not be routed (their weights stay in float and are reported).

    Example:
        >>> from torchvision.models.swin_transformer import ShiftedWindowAttention
        >>> attention, x = ShiftedWindowAttention(8, [2, 2], [0, 0], 2), torch.ones(1, 4, 4, 8)
        >>> [use.weight for use in functional_weight_uses(attention, x)]
        ['qkv.weight', 'proj.weight']
        >>> route_functional_weights(attention, x), functional_weight_uses(attention, x)
        ([], [])
    """
    _swin_v2_key_bias(model)
    uses = functional_weight_uses(model, example_input)
    owners = sorted({use.owner for use in uses if use.routable})
    for owner in owners:
        module = model.get_submodule(owner)
        routing = FunctionalRouting()
        module.register_forward_pre_hook(routing.enter)
        module.register_forward_hook(routing.leave, always_call=True)
    if owners:
        log.info(
            "%d modules pass their layers' weights to functions (%s...): those calls now run "
            "through the layers, the same function, so the weights are quantized",
            len(owners),
            owners[0],
        )
    left = functional_weight_uses(model, example_input) if owners else uses
    return left

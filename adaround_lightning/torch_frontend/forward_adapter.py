"""Models that take more than one tensor: ``forward_fn(model, x)`` says how to call them.

AIMET calls this ``forward_fn(model, inputs)``. The walk, the caches and the exports call a
network with one tensor ``x`` (a slice of the calibration data); :class:`ForwardAdapter` turns
that call into the user's (keyword arguments, constant masks or flags, a wrapper's method) and
keeps the model's own module and parameter names, so patterns, reports, the state_dict and
every export read as for the model itself.

Example:
    >>> import torch
    >>> net = nn.Linear(4, 2)
    >>> adapted = ForwardAdapter(net, lambda model, x: {"logits": model(x) * 2})
    >>> list(adapted.state_dict()) == list(net.state_dict())
    True
    >>> adapted(torch.ones(1, 4))["logits"].shape
    torch.Size([1, 2])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["ForwardAdapter", "ForwardFn"]

#: ``forward_fn(model, x) -> output``: ``x`` is a batch of the calibration data ``(B, ...)``.
ForwardFn = Callable[[nn.Module, torch.Tensor], Any]


class ForwardAdapter(nn.Module):
    """``model`` called as ``forward_fn(model, x)``, with the model's own names.

    Args:
        model: The user's network. Its children, parameters and buffers become this module's
            (the same objects), so names and the state_dict are the model's.
        forward_fn: How to call it on a batch ``x``.
    """

    def __init__(self, model: nn.Module, forward_fn: ForwardFn) -> None:
        super().__init__()
        # Not a submodule: a submodule would prefix every name with "model.".
        object.__setattr__(self, "wrapped", model)
        object.__setattr__(self, "forward_fn", forward_fn)
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, parameter in model.named_parameters(recurse=False):
            self.register_parameter(name, parameter)
        for name, buffer in model.named_buffers(recurse=False):
            self.register_buffer(name, buffer)

    def __setattr__(self, name: str, value: Any) -> None:
        # A child replaced here (a folded BatchNorm) is replaced in the wrapped model too.
        super().__setattr__(name, value)
        wrapped = self.__dict__.get("wrapped")
        if wrapped is not None and name in wrapped._modules and isinstance(value, nn.Module):
            wrapped._modules[name] = value

    def forward(self, x: torch.Tensor) -> Any:
        return self.forward_fn(self.wrapped, x)

    def train(self, mode: bool = True) -> ForwardAdapter:
        super().train(mode)
        self.wrapped.train(mode)  # the wrapped model's own flag (its children are ours)
        return self

    def _apply(self, fn: Callable, recurse: bool = True) -> ForwardAdapter:
        # .to() / .float() replace parameter tensors: the wrapped model must see the same ones.
        super()._apply(fn, recurse)
        for name, parameter in self._parameters.items():
            self.wrapped._parameters[name] = parameter
        for name, buffer in self._buffers.items():
            self.wrapped._buffers[name] = buffer
        return self

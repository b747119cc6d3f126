"""Capture one module's input or output while a network runs, stopping the pass right there."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CONCATENATED_INPUT_TYPES", "capture_input", "capture_output", "first_input"]


def _concatenated_input_types() -> dict[type[nn.Module], int]:
    from torchvision.models import densenet

    # DenseNet's dense layer takes the list of all earlier feature maps and starts with
    # ``torch.cat(inputs, 1)``; called with that concatenation it computes the same.
    return {densenet._DenseLayer: 1}


#: Module types whose first input is a list of tensors they concatenate (type -> dim).
CONCATENATED_INPUT_TYPES: dict[type[nn.Module], int] = _concatenated_input_types()


def first_input(module: nn.Module, args: tuple) -> torch.Tensor | None:
    """``module``'s first positional input as one tensor, or None when it is not one.

    A list of tensors is concatenated for the types in :data:`CONCATENATED_INPUT_TYPES`, which
    compute the same on the concatenation (DenseNet's dense layers).

    Example:
        >>> first_input(nn.ReLU(), (torch.ones(2, 3),)).shape
        torch.Size([2, 3])
    """
    first = args[0] if args else None
    if isinstance(first, torch.Tensor):
        return first
    dim = CONCATENATED_INPUT_TYPES.get(type(module))
    if dim is not None and isinstance(first, (list, tuple)) and first:
        return torch.cat(list(first), dim)
    return None


class _CapturedError(Exception):
    """Raised by a hook to stop a forward pass once the wanted tensor is captured."""


class _Catcher:
    """Hooks that keep one module's first input (or output) and stop the forward pass there."""

    def __init__(self) -> None:
        self.pieces: list[torch.Tensor] = []

    def pre_hook(self, module: nn.Module, args: tuple) -> None:
        value = first_input(module, args)
        if value is None:
            given = type(args[0]).__name__ if args else "nothing"
            raise TypeError(
                f"{type(module).__name__}'s first input is a {given}, not a tensor: it cannot "
                "be cached; leave it out of adaround.blocks"
            )
        self.pieces.append(value.detach())
        raise _CapturedError

    def post_hook(self, _module: nn.Module, _args: tuple, out: torch.Tensor) -> None:
        self.pieces.append(out.detach())
        raise _CapturedError


def _run_until(
    model: nn.Module, module: nn.Module, data: torch.Tensor, chunk: int, *, output: bool
) -> torch.Tensor:
    """Run ``model`` over ``data`` in chunks; return ``module``'s first input (or its output)."""
    catcher = _Catcher()
    handle = (
        module.register_forward_hook(catcher.post_hook)
        if output
        else module.register_forward_pre_hook(catcher.pre_hook)
    )
    try:
        with torch.no_grad():
            for start in range(0, data.shape[0], chunk):
                try:
                    model(data[start : start + chunk])
                except _CapturedError:
                    pass
                else:
                    raise RuntimeError(
                        "the forward pass never reached the module being cached; is it used in "
                        "the model's forward?"
                    )
    finally:
        handle.remove()
    pieces = catcher.pieces
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def capture_input(
    model: nn.Module, module: nn.Module, data: torch.Tensor, chunk: int = 256
) -> torch.Tensor:
    """First positional input of ``module`` while ``model`` runs on ``data``, shape ``(N, ...)``.

    The forward pass stops as soon as ``module`` is reached, so later layers cost nothing.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> capture_input(net, net[2], torch.randn(5, 3)).shape
        torch.Size([5, 4])
    """
    return _run_until(model, module, data, chunk, output=False)


def capture_output(
    model: nn.Module, module: nn.Module, data: torch.Tensor, chunk: int = 256
) -> torch.Tensor:
    """Output of ``module`` while ``model`` runs on ``data``, shape ``(N, ...)``.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> capture_output(net, net[0], torch.randn(5, 3)).shape
        torch.Size([5, 4])
    """
    return _run_until(model, module, data, chunk, output=True)

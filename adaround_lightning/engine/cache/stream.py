"""Streaming: block k+1's input computed from block k's cached input, not from the images.

The network's ``forward`` is arbitrary code, so it cannot be entered in the middle. Instead the
finished prefix is stubbed out: every block before ``k`` returns a one-sample zero tensor of its
output shape (nothing of it runs), block ``k`` runs on its cached input (a pre-hook swaps the
input in), the glue between the blocks (activations, pooling, reshapes) runs as written, and
the pass stops at block ``k + 1``'s input. The model itself receives one sample.

That is only right when block ``k + 1``'s input depends on block ``k``'s output alone: a chain.
:func:`plan_stream` checks it once per pair of consecutive blocks on the example batch
(the stubbed pass must give exactly the unstubbed input); where it does not hold the walk
restarts from the calibration images and logs it.

Example:
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    >>> stream = plan_stream(net, ["0", "2"], torch.randn(2, 3))
    >>> stream.chained
    {'2': True}
    >>> x = torch.randn(5, 3)
    >>> torch.equal(stream.next_inputs(net, "0", x, torch.randn(1, 3)), net[1](net[0](x)))
    True
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from adaround_lightning.graph.capture import first_input

__all__ = ["StreamPlan", "plan_stream"]

log = logging.getLogger(__name__)


class _ReachedNextBlockError(Exception):
    """Raised by a pre-hook to stop the pass once the next block's input is captured."""


class _InputCatcher:
    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def hook(self, module: nn.Module, args: tuple) -> None:
        value = first_input(module, args)
        self.value = None if value is None else value.detach()
        raise _ReachedNextBlockError


class _Stub:
    """Stands in for a finished block's ``forward``: a one-sample zero output, nothing runs."""

    def __init__(self, output: torch.Tensor) -> None:
        self.output = output

    def __call__(self, *args: object, **kwargs: object) -> torch.Tensor:
        return self.output


class _SwapInput:
    """A pre-hook that replaces a block's first input with the cached one."""

    def __init__(self, inputs: torch.Tensor) -> None:
        self.inputs = inputs

    def __call__(self, _module: nn.Module, args: tuple) -> tuple:
        return (self.inputs, *args[1:])


@dataclass(frozen=True)
class StreamPlan:
    """Which blocks can be streamed, and what each block's output looks like.

    Attributes:
        order: Block names in walk order.
        chained: Per block after the first, whether its input follows from the previous
            block's output alone.
        output_shapes: Per block, the shape of one sample of its output.
        dtypes: Per block, its output dtype.
        direct: Per chained block, whether its input *is* the previous block's output tensor
            (no glue between them, nothing changed it in place): then the previous block's
            float output, cached as its block-wise target, is this block's float input.
    """

    order: tuple[str, ...]
    chained: dict[str, bool]
    output_shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    direct: dict[str, bool] = field(default_factory=dict)

    @contextlib.contextmanager
    def _stubbed(self, model: nn.Module, names: list[str], device: torch.device) -> Iterator[None]:
        modules = [model.get_submodule(name) for name in names]
        for name, module in zip(names, modules, strict=True):
            shape, dtype = self.output_shapes[name], self.dtypes[name]
            module.forward = _Stub(torch.zeros(1, *shape, dtype=dtype, device=device))
        try:
            yield
        finally:
            for module in modules:
                del module.forward  # back to the class's forward

    @torch.no_grad()
    def next_inputs(
        self, model: nn.Module, block: str, inputs: torch.Tensor, model_input: torch.Tensor
    ) -> torch.Tensor:
        """The next block's input when ``block`` receives ``inputs`` (a chunk of its cache).

        Args:
            model: The float or the quantized network.
            block: The block whose cached input is given.
            inputs: That input, ``(n, ...)``.
            model_input: One sample of the model's input, ``(1, ...)`` (it feeds the stubs'
                glue only).
        """
        position = self.order.index(block)
        following = model.get_submodule(self.order[position + 1])
        catcher = _InputCatcher()
        current = model.get_submodule(block)
        handles = [
            # After any hook already on the block (an input quantizer): the cached input was
            # captured behind those hooks, so it must not pass them twice.
            current.register_forward_pre_hook(_SwapInput(inputs)),
            following.register_forward_pre_hook(catcher.hook),
        ]
        try:
            with self._stubbed(model, list(self.order[:position]), inputs.device):
                model(model_input)
        except _ReachedNextBlockError:
            pass
        finally:
            for handle in handles:
                handle.remove()
        if catcher.value is None:
            raise RuntimeError(f"the pass from {block} never reached the next block")
        return catcher.value


class _BlockRecorder:
    def __init__(self, names: dict[nn.Module, str]) -> None:
        self.names = names
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, object] = {}
        # The input tensor objects and their in-place version counters when seen, and the
        # outputs' version counters when produced: an input that is the previous block's
        # output object at the same version is that output, bit for bit.
        self.input_objects: dict[str, tuple[torch.Tensor, int]] = {}
        self.output_versions: dict[str, int] = {}

    def pre_hook(self, module: nn.Module, args: tuple) -> None:
        name = self.names[module]
        value = first_input(module, args)
        if name not in self.inputs and value is not None:
            self.inputs[name] = value.detach().clone()
            self.input_objects[name] = (value, value._version)

    def hook(self, module: nn.Module, _args: tuple, output: object) -> None:
        name = self.names[module]
        if name not in self.outputs and isinstance(output, torch.Tensor):
            self.output_versions[name] = output._version
        self.outputs.setdefault(name, output)

    def is_output_of(self, block: str, previous: str) -> bool:
        """Whether ``block``'s input is ``previous``'s output, unchanged."""
        seen, output = self.input_objects.get(block), self.outputs.get(previous)
        if seen is None or not isinstance(output, torch.Tensor):
            return False
        tensor, version = seen
        return tensor is output and version == self.output_versions.get(previous)


def _record_blocks(
    model: nn.Module, order: list[str], example_input: torch.Tensor
) -> _BlockRecorder:
    recorder = _BlockRecorder({model.get_submodule(name): name for name in order})
    handles = []
    for name in order:
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(recorder.pre_hook))
        handles.append(module.register_forward_hook(recorder.hook))
    try:
        model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return recorder


def _chained(
    plan: StreamPlan, model: nn.Module, block: str, recorder: _BlockRecorder, x: torch.Tensor
) -> bool:
    following = plan.order[plan.order.index(block) + 1]
    try:
        streamed = plan.next_inputs(model, block, recorder.inputs[block], x[:1])
    except Exception:  # any failure of the stubbed pass: not a chain
        return False
    expected = recorder.inputs[following]
    return streamed.shape == expected.shape and torch.equal(streamed, expected)


@torch.no_grad()
def plan_stream(model: nn.Module, order: list[str], example_input: torch.Tensor) -> StreamPlan:
    """Check, on ``example_input``, which blocks' inputs follow from the previous block's output.

    Args:
        model: The BN-folded float network (the quantized one has the same structure).
        order: Block module names in walk order.
        example_input: A small batch of model inputs, e.g. two calibration images.

    Returns:
        The plan; a block whose output is not a single tensor ends every chain through it.
    """
    recorder = _record_blocks(model, order, example_input)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, torch.dtype] = {}
    for name in order:
        output = recorder.outputs.get(name)
        if isinstance(output, torch.Tensor):
            shapes[name], dtypes[name] = tuple(output.shape[1:]), output.dtype
    plan = StreamPlan(tuple(order), {}, shapes, dtypes)
    for previous, block in itertools.pairwise(order):
        stubs_known = all(name in shapes for name in order[: order.index(previous) + 1])
        seen = previous in recorder.inputs and block in recorder.inputs
        ok = stubs_known and seen and _chained(plan, model, previous, recorder, example_input)
        plan.chained[block] = ok
        plan.direct[block] = ok and recorder.is_output_of(block, previous)
    broken = [name for name, ok in plan.chained.items() if not ok]
    if broken:
        log.info(
            "streaming: %d of %d block inputs do not follow from the previous block alone "
            "and restart from the calibration images: %s",
            len(broken),
            len(order),
            ", ".join(broken[:8]) + (" ..." if len(broken) > 8 else ""),
        )
    return plan

"""What the driver learns about a network from one traced forward pass.

The trace runs one small batch through the network with a forward hook on every leaf module and
records, in execution order, which module ran and which tensor it consumed. Data flow is read from
tensor identity: a module "directly follows" a layer when its input *is* that layer's output
tensor. This finds

* the BatchNorm that normalises a convolution's output (for folding),
* the activation (ReLU, ReLU6, ...) applied to a layer's output (for the reconstruction target),

whether the model is an ``nn.Sequential`` or calls its modules from a hand-written ``forward``
(ResNet's ``BasicBlock`` calls ``self.relu(self.bn1(self.conv1(x)))``). Activations called as
functions (``F.relu``) are invisible to hooks and are not included.

Blocks: every outermost module whose type is listed in :data:`BLOCK_TYPES` is one block:
torchvision's MobileNetV2/V3, ShuffleNetV2 and MNASNet inverted residuals, ResNet ``BasicBlock``
and ``Bottleneck``, EfficientNet ``MBConv`` and ``FusedMBConv``, RegNet ``ResBottleneckBlock``,
SqueezeNet ``Fire``, GoogLeNet and Inception-v3 inception modules, DenseNet dense layers,
ConvNeXt ``CNBlock``, ViT ``EncoderBlock``, Swin (V1 and V2) blocks, and MaxViT's ``MBConv`` and
``PartitionAttentionLayer``, and torch's ``nn.TransformerEncoderLayer``; ``adaround.blocks``
patterns add more. Models outside that list (timm, Hugging Face, your own) get their blocks from
the structure (:func:`discovered_blocks`): an element of an ``nn.Sequential`` or ``nn.ModuleList``
(or one of several sibling modules of one class) that holds two or more quantizable layers,
called once with one tensor and returning one tensor,
is a block, the innermost such element where they nest (a residual or transformer block, not its
stage). A block is fitted on its cached first input alone: one called with anything
more (a mask, a second tensor) is not fitted as a block, and the trace says so. Every
quantizable layer outside such a module is a block of its own. Blocks are ordered by when their
first layer runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import torch
from torch import nn

__all__ = [
    "ACTIVATION_TYPES",
    "BLOCK_TYPES",
    "QUANTIZABLE_TYPES",
    "UNSUPPORTED_TYPES",
    "Block",
    "LayerInfo",
    "NetworkTrace",
    "replay_block_arguments",
    "trace_network",
]

log = logging.getLogger(__name__)

#: Layer types whose weights AdaRound quantizes.
QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
#: Weighted layer types left in float (their weight layout differs), reported with a warning.
UNSUPPORTED_TYPES: tuple[type[nn.Module], ...] = (
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
#: Element-wise activations that are folded into a layer's reconstruction target.
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Hardtanh,
    nn.SiLU,
    nn.Hardswish,
    nn.GELU,
    nn.Sigmoid,
    nn.Hardsigmoid,
)
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_PASS_THROUGH = (nn.Identity, nn.Dropout)


def _block_types() -> tuple[type[nn.Module], ...]:
    import importlib

    # torchvision's residual blocks: (module, class) pairs; a missing one is skipped.
    names = [
        ("torchvision.models.mobilenetv2", "InvertedResidual"),
        ("torchvision.models.mobilenetv3", "InvertedResidual"),
        ("torchvision.models.resnet", "BasicBlock"),
        ("torchvision.models.resnet", "Bottleneck"),
        ("torchvision.models.efficientnet", "MBConv"),
        ("torchvision.models.efficientnet", "FusedMBConv"),
        ("torchvision.models.regnet", "ResBottleneckBlock"),
        ("torchvision.models.shufflenetv2", "InvertedResidual"),
        ("torchvision.models.mnasnet", "_InvertedResidual"),
        ("torchvision.models.squeezenet", "Fire"),
        ("torchvision.models.googlenet", "Inception"),
        *(("torchvision.models.inception", f"Inception{x}") for x in "ABCDE"),
        ("torchvision.models.densenet", "_DenseLayer"),
        ("torchvision.models.convnext", "CNBlock"),
        ("torchvision.models.vision_transformer", "EncoderBlock"),
        ("torchvision.models.swin_transformer", "SwinTransformerBlock"),
        ("torchvision.models.swin_transformer", "SwinTransformerBlockV2"),
        ("torchvision.models.maxvit", "MBConv"),
        ("torchvision.models.maxvit", "PartitionAttentionLayer"),
        ("torch.nn", "TransformerEncoderLayer"),
    ]
    types: list[type[nn.Module]] = []
    for module_name, class_name in names:
        block = getattr(importlib.import_module(module_name), class_name, None)
        if isinstance(block, type) and issubclass(block, nn.Module) and block not in types:
            types.append(block)
    return tuple(types)


#: Module types calibrated as one block.
BLOCK_TYPES: tuple[type[nn.Module], ...] = _block_types()


@dataclass
class LayerInfo:
    """One quantizable layer, as seen by the trace.

    Attributes:
        name: Qualified module name in the model.
        activation: Name of the activation module applied directly to its output, if any.
        norm: Name of the BatchNorm applied directly to its output, if any.
    """

    name: str
    activation: str | None = None
    norm: str | None = None


@dataclass
class Block:
    """A unit whose input is cached once: a block module or a single layer.

    Attributes:
        name: Qualified name of the block module (equal to the layer name for single layers).
        layers: Its quantizable layers in execution order.
    """

    name: str
    layers: list[LayerInfo] = field(default_factory=list)

    @property
    def is_module(self) -> bool:
        """A block module whose layers are fitted together, not a single layer on its own.

        Example:
            >>> Block("layer1.0").is_module, Block("fc", [LayerInfo("fc")]).is_module
            (True, False)
        """
        return self.name not in {info.name for info in self.layers}


@dataclass
class NetworkTrace:
    """Result of :func:`trace_network`."""

    layers: list[LayerInfo]
    blocks: list[Block]
    unsupported: list[str]
    shared: list[str]
    #: The largest output of any traced module, in bytes per sample.
    activation_bytes_per_sample: int = 0
    #: Block modules whose layers are fitted one by one instead, name -> why (a block is fitted
    #: on its cached first input alone, so it must be called with nothing else that matters).
    not_blocks: dict[str, str] = field(default_factory=dict)
    #: Blocks found from the structure (:func:`discovered_blocks`) and fitted as blocks.
    discovered: list[str] = field(default_factory=list)
    #: Blocks called with constants besides their input, and those constants (replayed when the
    #: walk calls the block alone: :func:`replay_block_arguments`).
    replayed: dict[str, tuple[tuple, dict]] = field(default_factory=dict)


def discovered_blocks(model: nn.Module) -> set[str]:
    """Repeated units holding two or more quantizable layers, innermost where they nest.

    A unit is an element of a Sequential or ModuleList (timm's ``blocks``/``stages``, Hugging
    Face's ``encoder.layer``, torchvision's ``layer1``) or one of several siblings of one class
    (timm RegNet's ``b1``, ``b2``); a unit's own parts (an attention, an MLP, a
    squeeze-excitation) are single attributes and stay inside it.

    Example:
        >>> unit = lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
        >>> sorted(discovered_blocks(nn.Sequential(unit(), unit(), nn.Linear(4, 2))))
        ['0', '1']
    """
    layers = [name for name, m in model.named_modules() if isinstance(m, QUANTIZABLE_TYPES)]
    found = set()
    for name, parent in model.named_modules():
        children = list(parent.named_children())
        classes = [type(child) for _, child in children]
        repeated = isinstance(parent, nn.Sequential | nn.ModuleList)
        for child_name, child in children:
            full = f"{name}.{child_name}" if name else child_name
            # An element of a container, or one of several siblings of its class (timm's
            # RegStage holds its blocks as attributes b1, b2, ...).
            # Two containers side by side (features, classifier) are not repeated units.
            container = isinstance(child, nn.Sequential | nn.ModuleList)
            unit = repeated or (classes.count(type(child)) > 1 and not container)
            inside = sum(1 for layer in layers if layer.startswith(f"{full}."))
            if unit and not isinstance(child, QUANTIZABLE_TYPES) and inside >= 2:
                found.add(full)
    return {b for b in found if not any(o.startswith(f"{b}.") for o in found)}


def _outer_block(name: str, block_names: set[str]) -> str | None:
    """Outermost block module containing module ``name`` (or equal to it)."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if prefix in block_names:
            return prefix
    return None


@dataclass(frozen=True)
class _Call:
    """One module call seen by the trace's hooks."""

    name: str
    module: nn.Module
    first_input: torch.Tensor | None
    input_version: int
    output: object
    output_version: int


class _CallRecorder:
    """Forward hooks that record every module call with its first input and its output."""

    def __init__(self, model: nn.Module) -> None:
        self.names = {module: name for name, module in model.named_modules()}
        self.calls: list[_Call] = []
        # Per module id: its first input and that tensor's version when the call started.
        self.pending: dict[int, tuple[torch.Tensor | None, int]] = {}

    # Tensor versions tell in-place updates apart: ResNet's ``out += identity`` returns the
    # BatchNorm's output tensor object, but modified, so the ReLU after it is not conv2's own.
    def pre_hook(self, module: nn.Module, args: tuple) -> None:
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        self.pending[id(module)] = (first, first._version if first is not None else -1)

    def hook(self, module: nn.Module, args: tuple, output: object) -> None:
        first, version = self.pending.pop(id(module), (None, -1))
        out_version = output._version if isinstance(output, torch.Tensor) else -1
        self.calls.append(_Call(self.names[module], module, first, version, output, out_version))


class _BlockCallChecker:
    """Hooks on the block modules: which take or return more than one tensor, or run twice.

    A block is fitted on its one cached input and its one output.
    """

    def __init__(self, names: dict[nn.Module, str]) -> None:
        self.names = names
        self.not_blocks: dict[str, str] = {}
        self.calls: dict[str, int] = {}
        #: Blocks called with constants besides their input (HF Swin's feature-map size):
        #: name -> (the other positional arguments, the keywords), replayed on every call.
        self.replay: dict[str, tuple[tuple, dict]] = {}

    def output_hook(self, module: nn.Module, args: tuple, output: object) -> None:
        name = self.names[module]
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.calls[name] > 1:
            self.not_blocks.setdefault(
                name, "called more than once, so its layers are fitted alone"
            )
        first = output[0] if isinstance(output, tuple | list) and output else None
        if isinstance(first, torch.Tensor) and name in self.replay:
            return  # a tuple whose first tensor the network reads (HF layers)
        if not isinstance(output, torch.Tensor):
            self.not_blocks.setdefault(
                name,
                f"returns {type(output).__name__}, not one tensor, so its layers are fitted alone",
            )

    def hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        name = self.names[module]
        # None and False are what a call without them gives (masks, flags left at defaults).
        extra = [type(a).__name__ for a in args[1:] if a is not None and a is not False]
        extra += [k for k, v in kwargs.items() if v is not None and v is not False]
        batch = args[0].shape[0] if args and isinstance(args[0], torch.Tensor) else 1
        replay = _replayable((tuple(args[1:]), dict(kwargs)), batch) if extra else None
        if replay is not None:
            self.replay[name] = replay  # type: ignore[assignment]
        elif extra and name not in self.not_blocks:
            self.not_blocks[name] = (
                f"called with more than its first input ({', '.join(extra)}), so its layers are "
                "fitted one by one"
            )


class _NotReplayableError(Exception):
    """A block argument that depends on the sample (or is no value at all)."""


def _replayable(value: object, batch: int) -> object | None:
    """``value`` as the walk can pass it to a block on any batch, or None if it cannot.

    Numbers, strings, flags and None, nested in tuples, lists and dicts, and tensors that are the
    same for every sample: a leading dimension of 1 (a decoder's rotary ``cos``/``sin`` and
    ``position_ids``, which broadcast) or rows that are all equal (a causal mask built per
    sample), kept as their first row. Calibration sequences all have one length, so these are
    the same for every batch. A tensor that differs between samples, or an object such as a KV
    cache, is not.

    Example:
        >>> _replayable((torch.ones(3, 4), {"flag": True}), batch=3)
        (tensor([[1., 1., 1., 1.]]), {'flag': True})
        >>> _replayable((torch.arange(3),), batch=3) is None
        True
    """
    try:
        return _replay_value(value, batch)
    except _NotReplayableError:
        return None


def _replay_value(value: object, batch: int) -> object:
    if isinstance(value, tuple | list):
        return type(value)(_replay_value(v, batch) for v in value)
    if isinstance(value, dict):
        return {k: _replay_value(v, batch) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.dim() == 0 or tensor.shape[0] == 1 or batch == 1:
            return tensor
        if tensor.shape[0] == batch and bool((tensor == tensor[:1]).all()):
            return tensor[:1].clone()
    raise _NotReplayableError


def _record_calls(
    model: nn.Module, example_input: torch.Tensor, checker: _BlockCallChecker | None = None
) -> list[_Call]:
    """Every leaf (and quantizable) module call of one forward pass, in execution order."""
    recorder = _CallRecorder(model)
    handles = []
    for module in checker.names if checker else ():
        handles.append(module.register_forward_pre_hook(checker.hook, with_kwargs=True))
        handles.append(module.register_forward_hook(checker.output_hook))
    for m in model.modules():
        # Norm-plus-activation modules (timm BatchNormAct2d) hold children but are norms.
        if not list(m.children()) or isinstance(m, (*QUANTIZABLE_TYPES, *_NORM_TYPES)):
            handles.append(m.register_forward_pre_hook(recorder.pre_hook))
            handles.append(m.register_forward_hook(recorder.hook))
    try:
        model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return recorder.calls


def _follow(call: _Call, source: LayerInfo, produced_by: dict[int, tuple[LayerInfo, int]]) -> None:
    """Attach a norm or activation that consumes ``source``'s output; pass identities through."""
    module, output = call.module, call.output
    if not isinstance(output, torch.Tensor):
        return
    if isinstance(module, _NORM_TYPES) and source.norm is None and source.activation is None:
        source.norm = call.name
        produced_by[id(output)] = (source, call.output_version)
    elif isinstance(module, _PASS_THROUGH):
        produced_by[id(output)] = (source, call.output_version)
    elif isinstance(module, ACTIVATION_TYPES) and source.activation is None:
        source.activation = call.name


def _layers_from_calls(calls: list[_Call]) -> tuple[list[LayerInfo], list[str], list[str]]:
    """The quantizable layers with what directly follows them, shared layers, unsupported ones.

    Data flow is read from tensor identity: a module directly follows a layer when its input
    *is* that layer's (possibly passed-through) output, at the same tensor version.
    """
    call_counts: dict[str, int] = {}
    for call in calls:
        call_counts[call.name] = call_counts.get(call.name, 0) + 1
    layers: list[LayerInfo] = []
    produced_by: dict[int, tuple[LayerInfo, int]] = {}
    shared: list[str] = []
    unsupported: list[str] = []
    for call in calls:
        if isinstance(call.module, QUANTIZABLE_TYPES):
            if call_counts[call.name] > 1:
                if call.name not in shared:
                    shared.append(call.name)
                continue
            info = LayerInfo(name=call.name)
            layers.append(info)
            if isinstance(call.output, torch.Tensor):
                produced_by[id(call.output)] = (info, call.output_version)
        elif isinstance(call.module, UNSUPPORTED_TYPES):
            if call.name not in unsupported:
                unsupported.append(call.name)
        elif call.first_input is not None and id(call.first_input) in produced_by:
            source, produced_version = produced_by[id(call.first_input)]
            if produced_version == call.input_version:
                _follow(call, source, produced_by)
    return layers, shared, unsupported


def _group_blocks(layers: list[LayerInfo], block_names: set[str]) -> list[Block]:
    """Blocks in the order their first layer runs; a layer outside any block is its own."""
    blocks: list[Block] = []
    block_index: dict[str, Block] = {}
    for info in layers:
        key = _outer_block(info.name, block_names) or info.name
        if key not in block_index:
            block_index[key] = Block(name=key)
            blocks.append(block_index[key])
        block_index[key].layers.append(info)
    return blocks


@torch.no_grad()
def _matches(name: str, module: nn.Module, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(name, p) or fnmatchcase(type(module).__name__, p) for p in patterns)


def trace_network(
    model: nn.Module,
    example_input: torch.Tensor,
    block_types: tuple[type[nn.Module], ...] | None = None,
    block_patterns: tuple[str, ...] = (),
) -> NetworkTrace:
    """Trace ``model`` once and report its quantizable layers and blocks in execution order.

    Args:
        model: The network, in eval mode.
        example_input: A small batch, e.g. two calibration images.
        block_types: Module types treated as blocks (default :data:`BLOCK_TYPES`).
        block_patterns: More blocks: modules whose name or class name matches one of these
            ``fnmatch`` patterns (``adaround.blocks``), e.g. ``"EncoderBlock"``,
            ``"encoder.layers.*"``.

    Returns:
        The layers (each with the activation/BatchNorm that directly follows it), the blocks, the
        weighted modules of unsupported types, and layers called more than once (weight sharing,
        which layer-wise AdaRound cannot handle: they are left in float).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> trace = trace_network(net.eval(), torch.randn(2, 3, 8, 8))
        >>> [(layer.name, layer.activation) for layer in trace.layers]
        [('0', '1'), ('3', None)]
    """
    block_types = BLOCK_TYPES if block_types is None else block_types
    block_names = {
        name
        for name, module in model.named_modules()
        if name and (isinstance(module, block_types) or _matches(name, module, block_patterns))
    }
    # Found from the structure: used where no known or declared block covers them.
    discovered = {n for n in discovered_blocks(model) if _outer_block(n, block_names) is None}
    checker = _BlockCallChecker({model.get_submodule(n): n for n in block_names | discovered})
    calls = _record_calls(model, example_input, checker)
    layers, shared, unsupported = _layers_from_calls(calls)
    rejected = set(checker.not_blocks)
    blocks = _group_blocks(layers, (block_names | discovered) - rejected)
    found = sorted(discovered - rejected)
    # A discovered candidate that does not qualify is no news; a known or declared one is.
    not_blocks = {n: why for n, why in checker.not_blocks.items() if n in block_names}
    per_sample = _largest_output(calls) // max(1, example_input.shape[0])
    if not_blocks:
        log.warning(
            "not fitted as blocks: %s",
            "; ".join(f"{name} ({why})" for name, why in not_blocks.items()),
        )
    replayed = {n: v for n, v in checker.replay.items() if n not in rejected}
    return NetworkTrace(
        layers, blocks, unsupported, shared, per_sample, not_blocks, found, replayed
    )


def _largest_output(calls: list[_Call]) -> int:
    """Bytes of the largest tensor any traced module returned."""
    tensors = [c.output for c in calls if isinstance(c.output, torch.Tensor)]
    return max((t.numel() * t.element_size() for t in tensors), default=0)


def replay_block_arguments(model: nn.Module, replayed: dict[str, tuple[tuple, dict]]) -> None:
    """Let the walk call such blocks with their input alone, as it calls every block.

    Called with one tensor (by the walk, not the network), the block gets its recorded
    constants back and returns its first output tensor; the network's own calls, which pass
    them, are left alone.
    """
    for name, (args, kwargs) in replayed.items():
        module = model.get_submodule(name)
        standalone: list[bool] = []

        def before(_: nn.Module, a: tuple, kw: dict, args=args, kwargs=kwargs, flag=standalone):
            flag.append(len(a) == 1 and not kw)
            return ((a[0], *args), dict(kwargs)) if flag[-1] else None

        def after(_: nn.Module, a: tuple, kw: dict, out: object, flag=standalone) -> object:
            alone = flag.pop() if flag else False
            return out[0] if alone and isinstance(out, tuple | list) else None

        module.register_forward_pre_hook(before, with_kwargs=True)
        module.register_forward_hook(after, with_kwargs=True)

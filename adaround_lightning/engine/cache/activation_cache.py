"""The calibration cache: block inputs, layer inputs and float targets, drawn as random batches.

For the block being calibrated the cache holds

* ``q_block_inputs``: what the *quantized* network feeds the block (earlier layers already
  hard-rounded): the ``x~`` of paper eq. (25), "asymmetric reconstruction";
* ``fp_block_inputs``: what the float network feeds it.

and, for the layer being calibrated inside the block,

* ``inputs``: the layer's input in the quantized network, ``x~``, shape ``(N, ...)``;
* ``targets``: the float layer's output on the float input (with the directly following
  activation, if any), ``f_a(W x)``, shape ``(N, ...)``.

Block inputs come from the previous block's (:mod:`~adaround_lightning.engine.cache.stream`)
wherever the walk is a chain, so each network sees the calibration set about once; elsewhere from
the images, a full-network pass that :attr:`CalibrationCache.passes` counts. Every buffer is a
:class:`~adaround_lightning.engine.cache.storage.CachedTensor`, preallocated and filled chunk by
chunk in whichever tier the :class:`~adaround_lightning.engine.cache.storage.CacheAllocator`
picks; a single-layer block's layer input is its block input (one buffer, not two). Batches are
drawn where the cache lives, with indices drawn on the compute device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import lightning as L
import torch
from torch import nn

from adaround_lightning.core.errors import UserError
from adaround_lightning.core.host_memory import release_freed_host_memory
from adaround_lightning.engine.cache.storage import (
    FORWARD_SHARE,
    CacheAllocator,
    CacheDevice,
    CachedTensor,
    MemoryTensor,
    in_layout,
)
from adaround_lightning.engine.cache.stream import StreamPlan
from adaround_lightning.engine.fit.fisher import FisherWeights
from adaround_lightning.graph.capture import capture_input, capture_output

__all__ = ["CachePasses", "CalibrationCache", "RandomBatches"]


class RandomBatches:
    """``num_steps`` batches of ``(inputs[idx], targets[idx])`` with random ``idx`` on their device.

    With ``weights`` (per-element weights of the targets' error, shaped like them), each batch
    is ``(inputs[idx], targets[idx], weights[idx])``.

    The indices for all steps are drawn up front (``num_steps x batch_size`` int64, 2.5 MB for
    10k steps of 32), from a generator seeded with ``seed``: the batches are reproducible and the
    training step does no host work to get them.

    With ``steps_per_batch = K > 1`` (or ``stack=True``) each item stacks the batches of ``K``
    consecutive steps, ``(K, batch_size, ...)`` (the last item may hold fewer), for a training
    step that runs ``K`` optimizer steps: the same batches in the same order as with ``K = 1``.

    Example:
        >>> batches = RandomBatches(torch.arange(10.0), torch.arange(10.0), 4, num_steps=3, seed=0)
        >>> [tuple(x.shape) for x, _ in batches]
        [(4,), (4,), (4,)]
        >>> grouped = RandomBatches(torch.arange(10.0), torch.arange(10.0), 4, 3, 0, 2)
        >>> [tuple(x.shape) for x, _ in grouped]
        [(2, 4), (1, 4)]
    """

    def __init__(
        self,
        inputs: torch.Tensor | CachedTensor,
        targets: torch.Tensor | CachedTensor,
        batch_size: int,
        num_steps: int,
        seed: int,
        steps_per_batch: int = 1,
        stack: bool | None = None,
        weights: FisherWeights | None = None,
    ) -> None:
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError("inputs and targets must have the same number of samples")
        if weights is not None and tuple(weights.shape) != tuple(targets.shape):
            raise ValueError("weights must have the targets' shape")
        self.inputs = inputs
        self.targets = targets
        self.weights = weights
        self.batch_size = batch_size
        self.num_steps = num_steps
        self.seed = seed
        self.steps_per_batch = steps_per_batch
        self.stack = steps_per_batch > 1 if stack is None else stack

    def __len__(self) -> int:
        return -(-self.num_steps // self.steps_per_batch)

    def _rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.weights is None:
            return self.inputs[idx], self.targets[idx]
        return self.inputs[idx], self.targets[idx], self.weights[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        device = self.inputs.device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        indices = torch.randint(
            0,
            self.inputs.shape[0],
            (self.num_steps, self.batch_size),
            generator=generator,
            device=device,
        )
        if not self.stack:
            for step in range(self.num_steps):
                yield self._rows(indices[step])
            return
        for first in range(0, self.num_steps, self.steps_per_batch):
            yield self._rows(indices[first : first + self.steps_per_batch])  # (K, batch_size)


@dataclass
class CachePasses:
    """How often the calibration set went through the networks.

    Attributes:
        full: Passes from the calibration images (one per network per restart).
        streamed: Block forwards that carried a cached block input to the next block.
        reused: Block inputs that were the previous block's cached float output (no pass).
        restarts: Blocks whose input had to come from the images although a block before
            them was cached (their input is not the previous block's output alone).
        seconds: Time spent filling buffers.
    """

    full: int = 0
    streamed: int = 0
    reused: int = 0
    restarts: int = 0
    seconds: float = 0.0


#: Produces rows ``start .. stop`` of a buffer being filled.
_Rows = Callable[[int, int], torch.Tensor]


@dataclass(frozen=True)
class _LayerTargets:
    """Rows of a layer's target ``f_a(W x)``: the float block run up to the layer's output."""

    fp_block: nn.Module
    fp_layer: nn.Module
    fp_inputs: CachedTensor
    chunk: int
    activation: nn.Module | None
    on_float_output: Callable[[int, torch.Tensor], None] | None

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        rows = self.fp_inputs[start:stop]
        output = capture_output(self.fp_block, self.fp_layer, rows, self.chunk)
        if self.on_float_output is not None:
            self.on_float_output(start, output)
        return self.activation(output) if self.activation is not None else output


def _per_sample(values: torch.Tensor, samples: int) -> torch.Tensor:
    """``values`` with one row per calibration sample: ``(n * k, ...)`` viewed as ``(n, k, ...)``.

    A layer inside a block may see the samples folded into its batch: Swin's attention runs
    its ``qkv`` Linear on ``(n * windows, tokens, C)``. A Linear computes the same on the
    unfolded view, and the buffer keeps one row per sample, like every other buffer.
    """
    rows = values.shape[0]
    if rows == samples:
        return values
    if rows % samples:
        raise RuntimeError(f"{rows} activation rows for {samples} calibration samples")
    return values.reshape(samples, rows // samples, *values.shape[1:])


def _all_finite(values: torch.Tensor) -> bool:
    # One reduction pass, no boolean copy: NaN and inf reach the minimum or the maximum.
    if values.numel() == 0:
        return True
    low, high = torch.aminmax(values)
    return bool(torch.isfinite(low) & torch.isfinite(high))


class CalibrationCache(L.LightningDataModule):
    """Caches the calibration activations of the block and layer being calibrated.

    Args:
        calibration_images: The calibration set, shape ``(N, C, H, W)`` (or any model input),
            already on the compute device.
        batch_size: Samples per training step.
        num_steps: Training steps per layer (the dataloader's length).
        seed: Base seed of the random batches; layer ``k`` uses ``seed + k``.
        forward_batch_size: Chunk size of the forward passes that fill the cache.
        steps_per_batch: Optimizer steps per training step (batches grouped by that many).
        allocator: Where buffers go (default: float32 on the compute device).
        stream: Which block inputs follow from the previous block's (None: none, every block's
            input comes from the images).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
        >>> cache = CalibrationCache(torch.randn(8, 3), batch_size=4, num_steps=2, seed=0)
        >>> cache.cache_block(net, net, net[2], net[2])
        >>> cache.cache_layer(net[2], net[2], net[2], net[2], activation=None, layer_index=0)
        >>> next(iter(cache.train_dataloader()))[0].shape
        torch.Size([4, 4])
    """

    def __init__(
        self,
        calibration_images: torch.Tensor,
        batch_size: int = 32,
        num_steps: int = 10000,
        seed: int = 0,
        forward_batch_size: int = 256,
        steps_per_batch: int = 1,
        allocator: CacheAllocator | None = None,
        stream: StreamPlan | None = None,
    ) -> None:
        super().__init__()
        self.steps_per_batch = steps_per_batch
        if calibration_images.shape[0] == 0:
            raise UserError("the calibration set is empty: give at least one sample")
        self.calibration_images = calibration_images
        self.batch_size = batch_size
        self.num_steps = num_steps
        self.seed = seed
        self.forward_batch_size = forward_batch_size
        self.allocator = allocator or CacheAllocator(
            calibration_images.device, CacheDevice.ACCELERATOR
        )
        self.stream = stream
        self.passes = CachePasses()
        self.block: str | None = None  # whose inputs fp/q_block_inputs are
        self.fp_block_inputs: CachedTensor | None = None
        self.q_block_inputs: CachedTensor | None = None
        self.inputs: CachedTensor | None = None
        self.targets: CachedTensor | None = None
        # The float block's output B(x) (a block-wise fit's targets), kept when it is exactly
        # the next block's float input (StreamPlan.direct): that block's input costs no pass.
        self.fp_block_outputs: CachedTensor | None = None
        #: Per-element weights of a block fit's error (``adaround.fisher``), or None.
        self.weights: FisherWeights | None = None
        self.layer_index = 0

    # ------------------------------------------------------------------ filling
    def _fill(
        self, rows: _Rows, dtype: torch.dtype | None = None, count: int | None = None
    ) -> CachedTensor:
        """A new buffer of ``N`` rows, filled chunk by chunk (preallocated, no ``torch.cat``).

        ``dtype``: the buffer's storage dtype (None: the cache's). ``count``: only the first
        ``count`` rows (None: all ``N``).
        """
        total = self.calibration_images.shape[0]
        count = total if count is None else min(count, total)
        chunk = self.forward_batch_size
        started = time.perf_counter()
        buffer: CachedTensor | None = None
        for start in range(0, count, chunk):
            values = _per_sample(rows(start, min(start + chunk, count)), min(chunk, count - start))
            if not _all_finite(values):
                raise UserError("non-finite activations in the calibration data")
            if buffer is None:
                buffer = self.allocator.allocate((count, *values.shape[1:]), dtype)
            buffer.write(start, values)
        assert buffer is not None
        release_freed_host_memory()  # the next pass starts from what is live (no creep)
        self.passes.seconds += time.perf_counter() - started
        return buffer

    def _from_images(self, model: nn.Module, block: nn.Module) -> CachedTensor:
        images, chunk = self.calibration_images, self.forward_batch_size
        first = capture_input(model, block, images[:1], 1)
        if first.data_ptr() == images.data_ptr():  # the block's input is the model input itself
            return MemoryTensor.wrap(images, self.allocator.channels_last)
        self.passes.full += 1
        # In the cache's layout, as the images' wrapped reads are: the same float results
        # whether a block input comes from the images or streams from the stem's.
        layout = self.allocator.channels_last
        return self._fill(
            lambda s, e: capture_input(model, block, in_layout(images[s:e], layout), chunk)
        )

    def _streamed(self, model: nn.Module, inputs: CachedTensor) -> CachedTensor:
        assert self.stream is not None and self.block is not None
        stream, block, model_input = self.stream, self.block, self.calibration_images[:1]
        return self._fill(lambda s, e: stream.next_inputs(model, block, inputs[s:e], model_input))

    def can_stream_to(self, name: str) -> bool:
        """Whether block ``name``'s input follows from the cached block's (the previous one)."""
        if self.stream is None or self.block is None or name not in self.stream.order:
            return False
        adjacent = self.stream.order.index(name) == self.stream.order.index(self.block) + 1
        return adjacent and self.stream.chained.get(name, False)

    def _free(self, *buffers: CachedTensor | None) -> None:
        for buffer in buffers:
            self.allocator.free(buffer)

    @torch.no_grad()
    def cache_block(
        self,
        fp_model: nn.Module,
        q_model: nn.Module,
        fp_block: nn.Module,
        q_block: nn.Module,
        name: str | None = None,
    ) -> None:
        """Cache the block's input in the float and in the quantized network.

        From the previous cached block's input when the stream plan says that block ``name``
        follows from it alone, otherwise from the images (one full pass per network).
        """
        self.release_layer()
        chained = name is not None and self.can_stream_to(name)
        if not chained and self.block is not None:
            self.passes.restarts += 1
        old = (self.fp_block_inputs, self.q_block_inputs)
        kept, self.fp_block_outputs = self.fp_block_outputs, None
        if chained:
            assert old[0] is not None and old[1] is not None
            assert self.stream is not None and name is not None
            if kept is not None and self.stream.direct.get(name, False):
                fp_inputs, kept = kept, None  # the previous block's B(x): no pass
                self.passes.reused += 1
            else:
                fp_inputs = self._streamed(fp_model, old[0])
                self.passes.streamed += 1
            q_inputs = self._streamed(q_model, old[1])
            self.passes.streamed += 1
        else:
            fp_inputs = self._from_images(fp_model, fp_block)
            q_inputs = self._from_images(q_model, q_block)
        self._free(*old, kept)
        self.fp_block_inputs, self.q_block_inputs, self.block = fp_inputs, q_inputs, name

    @torch.no_grad()
    def cache_layer(
        self,
        fp_block: nn.Module,
        q_block: nn.Module,
        fp_layer: nn.Module,
        q_layer: nn.Module,
        activation: nn.Module | None,
        layer_index: int,
        on_float_output: Callable[[int, torch.Tensor], None] | None = None,
        samples: int | None = None,
    ) -> None:
        """Cache a layer's quantized-network input and float target from the cached block inputs.

        Runs the block (not the whole network) up to the layer: the quantized block from
        ``q_block_inputs``, so layers of this block calibrated earlier are already rounded, and
        the float block from ``fp_block_inputs``. A single-layer block's layer input is its
        block input (the same buffer). ``on_float_output(start, chunk)`` sees every chunk of
        the float layer's output before the activation (bias correction shares the pass).
        ``samples``: only the first ``samples`` calibration samples (None: all), for a report
        that needs no more.
        """
        if self.fp_block_inputs is None or self.q_block_inputs is None:
            raise RuntimeError("call cache_block before cache_layer")
        self.release_layer()
        chunk = self.forward_batch_size
        fp_inputs, q_inputs = self.fp_block_inputs, self.q_block_inputs
        if q_layer is q_block and samples is None:
            self.inputs = q_inputs
        else:
            self.inputs = self._fill(
                lambda s, e: capture_input(q_block, q_layer, q_inputs[s:e], chunk), None, samples
            )

        targets = _LayerTargets(fp_block, fp_layer, fp_inputs, chunk, activation, on_float_output)
        self.targets = self._fill(targets, None, samples)
        self.layer_index = layer_index

    @torch.no_grad()
    def cache_block_output(self, fp_block: nn.Module, layer_index: int) -> None:
        """Train on the whole block: inputs ``x~`` (quantized network), targets ``B(x)`` (float).

        Used by block reconstruction; the targets are the float block's output on the float
        network's block input.
        """
        if self.fp_block_inputs is None or self.q_block_inputs is None:
            raise RuntimeError("call cache_block before cache_block_output")
        self.release_layer()
        fp_inputs = self.fp_block_inputs
        self.targets = self._fill(lambda s, e: fp_block(fp_inputs[s:e]))
        self.inputs = self.q_block_inputs
        self.layer_index = layer_index

    def cache_fisher_weights(
        self, squared_gradients: _Rows, mean: Callable[[], float], damping: float
    ) -> bool:
        """Weigh the block fit's error by :class:`FisherWeights` of ``g^2`` rows.

        ``squared_gradients(start, stop)`` gives rows of ``g^2`` (kept in float32, whatever
        the cache dtype: ``g^2`` underflows in float16); ``mean()``, called once they are all
        filled, their mean. Returns False, and weighs nothing, when that mean is 0 (the block's
        output does not move the network's output on the calibration data).
        """
        if self.targets is None:
            raise RuntimeError("call cache_block_output before cache_fisher_weights")
        buffer = self._fill(squared_gradients, torch.float32)
        m = mean()
        if not m > 0:
            self._free(buffer)
            return False
        self.weights = FisherWeights(buffer, m, damping)
        return True

    def keep_block_output(self) -> None:
        """Keep the block-wise targets ``B(x)`` for the next block, whose float input they are.

        Only when that input is exactly this block's output (:attr:`StreamPlan.direct`); the
        buffer then outlives :meth:`release_layer` and becomes the next ``fp_block_inputs``.
        """
        if self.stream is None or self.block is None or self.targets is None:
            return
        position = self.stream.order.index(self.block)
        following = self.stream.order[position + 1 : position + 2]
        if following and self.stream.direct.get(following[0], False):
            self.fp_block_outputs = self.targets

    def release_layer(self) -> None:
        """Drop the layer's (or block output's) buffers; the block inputs stay."""
        if self.inputs is not self.q_block_inputs:
            self._free(self.inputs)
        if self.targets is not self.fp_block_outputs:
            self._free(self.targets)
        if self.weights is not None:
            self._free(self.weights.squared_gradients)  # type: ignore[arg-type]
        self.inputs = self.targets = self.weights = None

    def release(self) -> None:
        """Drop every cached buffer (the calibration images stay)."""
        self.release_layer()
        self._free(self.fp_block_inputs, self.q_block_inputs, self.fp_block_outputs)
        self.fp_block_inputs = self.q_block_inputs = self.fp_block_outputs = None
        self.block = None

    def train_dataloader(self) -> RandomBatches:
        """Random batches of the current layer's ``(inputs, targets)``."""
        if self.inputs is None or self.targets is None:
            raise RuntimeError("call cache_layer before training")
        return RandomBatches(
            self.inputs,
            self.targets,
            self.batch_size,
            self.num_steps,
            self.seed + self.layer_index,
            self.steps_in_one_batch(),
            stack=self.steps_per_batch > 1,
            weights=self.weights,
        )

    def steps_in_one_batch(self) -> int:
        """``steps_per_batch``, lowered under a cache budget so one stacked item fits its share.

        ``K`` stacked batches of 224 px activations are large (ResNet50 ``layer1``, K = 8,
        batch 32: 1.6 GB of inputs and targets at once); fewer per item give the same batches
        in the same order, so the same result.
        """
        budget = self.allocator.budget_bytes
        if budget is None or self.steps_per_batch == 1 or self.inputs is None:
            return self.steps_per_batch
        assert self.targets is not None
        weighted = 2 if self.weights is not None else 1  # weights are shaped like the targets
        target_elements = weighted * math.prod(self.targets.shape[1:])
        row_bytes = 4 * (math.prod(self.inputs.shape[1:]) + target_elements)
        fits = int(budget * FORWARD_SHARE) // max(1, row_bytes * self.batch_size)
        return max(1, min(self.steps_per_batch, fits))

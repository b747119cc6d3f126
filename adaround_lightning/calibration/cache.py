"""The calibration cache: block inputs, layer inputs and float targets, drawn as random batches.

For the block being calibrated the cache holds

* ``q_block_inputs``: what the *quantized* network feeds the block (earlier layers already
  hard-rounded): the ``x~`` of paper eq. (25), "asymmetric reconstruction";
* ``fp_block_inputs``: what the float network feeds it.

and, for the layer being calibrated inside the block,

* ``inputs``: the layer's input in the quantized network, ``x~``, shape ``(N, ...)``;
* ``targets``: the float layer's output on the float input (with the directly following
  activation, if any), ``f_a(W x)``, shape ``(N, ...)``.

Both networks see the calibration set once per block (plus one partial block pass per layer), never
once per layer. Batches are drawn by indexing the cached tensors where they live, with indices
drawn on that device, so a GPU cache never round-trips through host memory during training.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import torch
from torch import nn

from adaround_lightning.core.errors import UserError
from adaround_lightning.graph.capture import capture_input, capture_output

__all__ = ["CalibrationCache", "RandomBatches"]


class RandomBatches:
    """``num_steps`` batches of ``(inputs[idx], targets[idx])`` with random ``idx`` on their device.

    The indices for all steps are drawn up front (``num_steps x batch_size`` int64, 2.5 MB for
    10k steps of 32), from a generator seeded with ``seed``: the batches are reproducible and the
    training step does no host work to get them.

    With ``steps_per_batch = K > 1`` each item stacks the batches of ``K`` consecutive steps,
    ``(K, batch_size, ...)`` (the last item may hold fewer), for a training step that runs ``K``
    optimizer steps: the same batches in the same order as with ``K = 1``.

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
        inputs: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        num_steps: int,
        seed: int,
        steps_per_batch: int = 1,
    ) -> None:
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError("inputs and targets must have the same number of samples")
        self.inputs = inputs
        self.targets = targets
        self.batch_size = batch_size
        self.num_steps = num_steps
        self.seed = seed
        self.steps_per_batch = steps_per_batch

    def __len__(self) -> int:
        return -(-self.num_steps // self.steps_per_batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.inputs.device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        indices = torch.randint(
            0,
            self.inputs.shape[0],
            (self.num_steps, self.batch_size),
            generator=generator,
            device=device,
        )
        if self.steps_per_batch == 1:
            for step in range(self.num_steps):
                idx = indices[step]
                yield self.inputs[idx], self.targets[idx]
            return
        for first in range(0, self.num_steps, self.steps_per_batch):
            idx = indices[first : first + self.steps_per_batch]  # (K, batch_size)
            yield self.inputs[idx], self.targets[idx]


class CalibrationCache(L.LightningDataModule):
    """Caches the calibration activations of the block and layer being calibrated.

    Args:
        calibration_images: The calibration set, shape ``(N, C, H, W)`` (or any model input),
            already on the device where the cache should live.
        batch_size: Samples per training step.
        num_steps: Training steps per layer (the dataloader's length).
        seed: Base seed of the random batches; layer ``k`` uses ``seed + k``.
        forward_batch_size: Chunk size of the forward passes that fill the cache.
        steps_per_batch: Optimizer steps per training step (batches grouped by that many).

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
        self.fp_block_inputs: torch.Tensor | None = None
        self.q_block_inputs: torch.Tensor | None = None
        self.inputs: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None
        self.layer_index = 0

    @torch.no_grad()
    def cache_block(
        self, fp_model: nn.Module, q_model: nn.Module, fp_block: nn.Module, q_block: nn.Module
    ) -> None:
        """Cache the block's input in the float and in the quantized network (one pass each)."""
        self.inputs = self.targets = None
        self.fp_block_inputs = capture_input(
            fp_model, fp_block, self.calibration_images, self.forward_batch_size
        )
        self.q_block_inputs = capture_input(
            q_model, q_block, self.calibration_images, self.forward_batch_size
        )

    @torch.no_grad()
    def cache_layer(
        self,
        fp_block: nn.Module,
        q_block: nn.Module,
        fp_layer: nn.Module,
        q_layer: nn.Module,
        activation: nn.Module | None,
        layer_index: int,
    ) -> None:
        """Cache a layer's quantized-network input and float target from the cached block inputs.

        Runs the block (not the whole network) up to the layer: the quantized block from
        ``q_block_inputs``, so layers of this block calibrated earlier are already rounded, and
        the float block from ``fp_block_inputs``.
        """
        if self.fp_block_inputs is None or self.q_block_inputs is None:
            raise RuntimeError("call cache_block before cache_layer")
        self.inputs = capture_input(q_block, q_layer, self.q_block_inputs, self.forward_batch_size)
        targets = capture_output(fp_block, fp_layer, self.fp_block_inputs, self.forward_batch_size)
        if activation is not None:
            targets = activation(targets)
        if not torch.isfinite(targets).all() or not torch.isfinite(self.inputs).all():
            raise UserError("non-finite activations in the calibration data")
        self.targets = targets
        self.layer_index = layer_index

    @torch.no_grad()
    def cache_block_output(self, fp_block: nn.Module, layer_index: int) -> None:
        """Train on the whole block: inputs ``x~`` (quantized network), targets ``B(x)`` (float).

        Used by block reconstruction; the targets are the float block's output on the float
        network's block input.
        """
        if self.fp_block_inputs is None or self.q_block_inputs is None:
            raise RuntimeError("call cache_block before cache_block_output")
        chunk = self.forward_batch_size
        targets = torch.cat(
            [
                fp_block(self.fp_block_inputs[start : start + chunk])
                for start in range(0, self.fp_block_inputs.shape[0], chunk)
            ]
        )
        if not torch.isfinite(targets).all():
            raise UserError("non-finite activations in the calibration data")
        self.inputs, self.targets = self.q_block_inputs, targets
        self.layer_index = layer_index

    def release(self) -> None:
        """Drop every cached tensor (the calibration images stay)."""
        self.fp_block_inputs = self.q_block_inputs = self.inputs = self.targets = None

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
            self.steps_per_batch,
        )

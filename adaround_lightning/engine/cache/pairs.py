"""A LightningDataModule over fixed ``(inputs, targets)`` tensors of one layer.

For fits whose activations were sampled elsewhere (the ONNX path runs the graph in
onnxruntime): the same random batches as :class:`~.cache.CalibrationCache` serves.
"""

from __future__ import annotations

import lightning as L
import torch

from adaround_lightning.engine.cache.activation_cache import RandomBatches

__all__ = ["LayerPairs"]


class LayerPairs(L.LightningDataModule):
    """Random batches of a layer's cached input ``x~`` and target ``f_a(W x)``.

    Args:
        inputs: The layer's input in the quantized network, ``(N, ...)``.
        targets: Its float target, ``(N, ...)``.
        batch_size: Samples per step.
        num_steps: Steps of the fit (the fit step sets it).
        seed: Seed of the batch indices.
        steps_per_batch: Optimizer steps per training step (batches stacked by that many).

    Example:
        >>> pairs = LayerPairs(torch.randn(8, 3), torch.randn(8, 2), 4, 2, seed=0)
        >>> [tuple(x.shape) for x, _ in pairs.train_dataloader()]
        [(4, 3), (4, 3)]
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
        super().__init__()
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError("inputs and targets must have the same number of samples")
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.num_steps = batch_size, num_steps
        self.seed, self.steps_per_batch = seed, steps_per_batch

    def train_dataloader(self) -> RandomBatches:
        """``num_steps`` random batches (stacked by ``steps_per_batch``)."""
        return RandomBatches(
            self.inputs,
            self.targets,
            self.batch_size,
            self.num_steps,
            self.seed,
            self.steps_per_batch,
            stack=self.steps_per_batch > 1,
        )

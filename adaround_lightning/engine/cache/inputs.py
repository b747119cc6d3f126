"""The calibration inputs: stacked from whatever the user gives, checked, sharded per process."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from adaround_lightning.core.distributed import ProcessContext
from adaround_lightning.core.errors import UserError

__all__ = ["CalibrationInputs", "calibration_tensor", "shard_for_process"]


def _first_tensor(item: Any) -> torch.Tensor:
    if isinstance(item, torch.Tensor):
        return item
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        return item[0]
    if isinstance(item, dict):
        for value in item.values():
            if isinstance(value, torch.Tensor):
                return value
    raise TypeError(
        f"cannot find the model input in a calibration item of type {type(item).__name__}; "
        "give tensors, (input, label) pairs or dicts of tensors"
    )


def calibration_tensor(
    data: torch.Tensor | Dataset | DataLoader | Iterable[Any], num_samples: int
) -> torch.Tensor:
    """Stack at most ``num_samples`` model inputs from a tensor, dataset, loader or iterable.

    Labels, if present (``(input, label)`` items), are dropped: calibration is unsupervised.

    Example:
        >>> calibration_tensor(torch.zeros(10, 3, 4, 4), 8).shape
        torch.Size([8, 3, 4, 4])
    """
    if isinstance(data, torch.Tensor):
        return data[:num_samples]
    pieces: list[torch.Tensor] = []
    count = 0
    if isinstance(data, Dataset) and not isinstance(data, Iterable):
        indices = range(min(num_samples, len(data)))  # type: ignore[arg-type]
        iterator: Iterator[Any] = (data[i] for i in indices)
        batched = False
    else:
        iterator = iter(data)
        batched = isinstance(data, DataLoader)
    for item in iterator:
        tensor = _first_tensor(item)
        if not batched:
            tensor = tensor.unsqueeze(0)
        pieces.append(tensor[: num_samples - count])
        count += pieces[-1].shape[0]
        if count >= num_samples:
            break
    if not pieces:
        raise UserError("the calibration set is empty: give at least one sample")
    return torch.cat(pieces)


@dataclass(frozen=True)
class CalibrationInputs:
    """This process's calibration samples and its part of every training batch.

    Attributes:
        images: This process's shard, ``(N / world_size, ...)``, on its device.
        batch_size: Samples per step on this process (the global batch over the processes).
    """

    images: torch.Tensor
    batch_size: int


def shard_for_process(
    images: torch.Tensor, batch_size: int, context: ProcessContext
) -> CalibrationInputs:
    """Check ``images`` against the global ``batch_size`` and keep this process's shard.

    Under DDP each process caches every ``world_size``-th sample and draws
    ``batch_size / world_size`` of them per step, so the global batch stays ``batch_size``.

    Raises:
        UserError: Fewer samples than one batch, a batch that does not divide by the processes,
            or inputs that are not numbers (floats, or integer token ids).

    Example:
        >>> single = ProcessContext(torch.device("cpu"), 0, 1)
        >>> shard_for_process(torch.zeros(64, 3), 32, single).batch_size
        32
    """
    if images.shape[0] < batch_size:
        raise UserError(
            f"the calibration set has {images.shape[0]} samples, fewer than one batch "
            f"(adaround.batch_size={batch_size}): give more samples or lower the batch size"
        )
    if context.world_size > 1:
        # adaround.batch_size is the global batch: each process draws its part from its shard.
        if batch_size % context.world_size:
            raise UserError(
                f"adaround.batch_size={batch_size} is the global batch and must divide "
                f"by the {context.world_size} processes: pick a multiple of {context.world_size}"
            )
        batch_size //= context.world_size
        images = images[context.rank :: context.world_size]
    images = images.to(context.device)
    if images.dtype == torch.bool or images.is_complex():
        raise UserError(
            f"calibration inputs must be numbers (images, features or token ids), got "
            f"{images.dtype}"
        )
    return CalibrationInputs(images=images, batch_size=batch_size)

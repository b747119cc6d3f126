"""What a process of a multi-process calibration knows of the others: reductions and checks.

Lightning launches and connects the processes (``trainer.strategy=ddp``, ``trainer.devices=N``,
``trainer.num_nodes``, or an external launcher such as torchrun or SLURM). Every process runs the
same driver over its shard of the calibration set; Lightning's DDP all-reduces ``V``'s gradients,
so every process applies the same Adam update and holds the same ``V``. After each layer the
processes compare checksums of their integers and stop if they differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["ProcessContext", "all_reduce_max", "all_reduce_sum", "check_same_on_all_ranks"]


@dataclass(frozen=True)
class ProcessContext:
    """This process's device, global rank and the number of processes."""

    device: torch.device
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes outputs and prints."""
        return self.rank == 0


def _active(context: ProcessContext) -> bool:
    return context.world_size > 1 and dist.is_available() and dist.is_initialized()


def all_reduce_sum(value: torch.Tensor, context: ProcessContext) -> torch.Tensor:
    """Sum of ``value`` over all processes (itself when there is one)."""
    if _active(context):
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def all_reduce_max(value: torch.Tensor, context: ProcessContext) -> torch.Tensor:
    """Maximum of ``value`` over all processes (itself when there is one)."""
    if _active(context):
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def check_same_on_all_ranks(integers: torch.Tensor, what: str, context: ProcessContext) -> None:
    """Raise if ``integers`` differ between processes (compares two exact float64 checksums).

    Raises:
        RuntimeError: Naming ``what`` and the ranks' checksums.
    """
    if not _active(context):
        return
    flat = integers.reshape(-1).to(torch.float64)
    position = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
    checksum = torch.stack([flat.sum(), (flat * position).sum()])  # exact below 2**53
    gathered = [torch.empty_like(checksum) for _ in range(context.world_size)]
    dist.all_gather(gathered, checksum)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        sums = [g.tolist() for g in gathered]
        raise RuntimeError(f"the processes disagree on the rounded weights of {what}: {sums}")

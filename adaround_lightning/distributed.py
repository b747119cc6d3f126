"""Multi-process calibration on Lightning's DDP: who am I, sharding, and agreement checks.

Lightning launches and connects the processes (``trainer.strategy=ddp``, ``trainer.devices=N``,
``trainer.num_nodes``, or an external launcher such as torchrun or SLURM). Every process runs the
same driver over its shard of the calibration set; Lightning's DDP all-reduces ``V``'s gradients,
so every process applies the same Adam update and holds the same ``V``. After each layer the
processes compare checksums of their integers and stop if they differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from adaround_lightning.errors import UserError

__all__ = [
    "ProcessContext",
    "all_reduce_max",
    "all_reduce_sum",
    "check_same_on_all_ranks",
    "inner_trainer_kwargs",
    "process_context",
]

_SPAWNING = {"ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_spawn_find_unused_parameters_false"}


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


def process_context(trainer_kwargs: dict[str, Any]) -> ProcessContext:
    """Ask Lightning, without launching anything, where this process runs and which rank it is.

    Example:
        >>> process_context({"accelerator": "cpu", "devices": 1}).world_size
        1
    """
    from adaround_lightning.driver import quiet_lightning

    strategy = trainer_kwargs.get("strategy")
    if isinstance(strategy, str) and strategy in _SPAWNING:
        raise UserError(
            f"trainer.strategy={strategy} re-imports the program in new processes and cannot run "
            "the Hydra app: use trainer.strategy=ddp"
        )
    with quiet_lightning():
        probe = L.Trainer(
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            **trainer_kwargs,
        )
    set_world_ranks = getattr(probe.strategy, "set_world_ranks", None)
    if set_world_ranks is not None:
        set_world_ranks()  # reads LOCAL_RANK / NODE_RANK / torchrun / SLURM variables
    return ProcessContext(probe.strategy.root_device, probe.global_rank, probe.world_size)


def inner_trainer_kwargs(trainer_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Trainer arguments for one layer's fit: ``ddp`` without per-step buffer broadcasts.

    DDP broadcasts all module buffers from rank 0 before every forward by default. The layer
    module's buffers (the loss history, the beta schedule, the quantizer's grid) are identical on
    every rank or rank-local by design, so the broadcast would only cost time each step.
    """
    kwargs = dict(trainer_kwargs)
    if kwargs.get("strategy") == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        kwargs["strategy"] = DDPStrategy(broadcast_buffers=False)
    return kwargs


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

"""A split sharded across processes started by ``torchrun`` (torch.distributed: gloo on CPUs, nccl on GPUs).

Batch ``k`` of a pass goes to process ``k mod world``; each process keeps the counts of each of its batches apart,
and at the end every process receives all of them and folds them in batch order, exactly as one process adds them
(:meth:`~vb_probe.metrics.grounding.HeadCounts.merge`): the tables equal the one-process run's byte for byte. Only
process 0 writes results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, number: int) -> bool:
        """Whether batch ``number`` is this process's."""
        return number % self.size == self.rank


def world(device_type: str = "cpu") -> World:
    """This process's place among those ``torchrun`` started (one process: rank 0 of 1), the process group set up
    on first use."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def gather(obj, where: World) -> list:
    """``obj`` of every process, in rank order (``[obj]`` for one process)."""
    if where.size == 1:
        return [obj]
    import torch.distributed as dist

    received: list = [None] * where.size
    dist.all_gather_object(received, obj)
    return received

"""Multi-process training with ``torchrun`` (DistributedDataParallel): the little the trainer needs.

Every rank extracts a shard of the training images and all ranks gather the full feature matrix; rank 0
computes the pseudo-labels and broadcasts them, so all ranks train on identical labels. Cluster-memory
writes use the features of every rank's batch (gathered; with memory_update "official" inside the backward
pass, where every rank runs the same graph and so the same gathers in the same order), so the memories stay
identical too.
A single process is the world of size 1 and every call is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device_type: str) -> "DistContext":
        """Join the process group when launched by ``torchrun`` (NCCL on CUDA, gloo on CPU)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(),
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of n items (sizes differ by at most one)."""
        per, extra = divmod(n, self.world_size)
        start = self.rank * per + min(self.rank, extra)
        return slice(start, start + per + (1 if self.rank < extra else 0))

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's rows in rank order (shapes may differ in the first dimension)."""
        if not self.enabled:
            return x
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
        padded[: x.shape[0]] = x
        chunks = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(chunks, padded)
        return torch.cat([c[: int(s.item())] for c, s in zip(chunks, sizes)])

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

        DDP broadcasts buffers at the START of each forward, so after the last step each rank's running
        statistics still reflect its own batch; evaluation and feature extraction need one set.
        """
        if self.enabled:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

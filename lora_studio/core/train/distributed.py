"""Several processes, one run: what the engine needs under ``accelerate launch`` or ``torchrun``.

The distributed work itself is torch DDP driven by ``transformers.Trainer`` / accelerate; this
module only answers "which rank am I", shares rank 0's decisions (the run folder, a cancel) with
the other ranks, and is a no-op in a single process (no process group, no collective calls).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """From the launcher's environment (torchrun and accelerate both set these)."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init(device: str) -> World:
    """Join the process group early, so rank 0 can share the run folder before training starts."""
    current = world()
    if current.distributed:
        from accelerate import PartialState

        PartialState(cpu=not device.startswith("cuda"))
    return current


def broadcast(value: Any) -> Any:
    """Rank 0's value on every rank."""
    if not world().distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (a stop seen by one rank stops them all)."""
    if not world().distributed:
        return flag
    import torch
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def sum_ranks(count: int) -> int:
    """A count summed over every rank (e.g. tokens processed), called by all ranks together."""
    if not world().distributed:
        return count
    import torch
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([count], dtype=torch.long, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return int(value.item())

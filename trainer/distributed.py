"""One process or DDP under torchrun: who this rank is, and the few collectives the loop needs."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this process created the group, so it destroys it

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """DDP when launched by torchrun with WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU); else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    owns = False
    if world > 1 and not dist.is_initialized():
        # Imported first: imported after the group exists (DDP does), its functions keep the group as a default
        # argument, so the gloo group outlives destroy_process_group and aborts the interpreter at exit.
        # import_module, not `import torch.distributed.nn`: that statement would make `torch` a local name of this
        # whole function, unbound at its first use above (UnboundLocalError, ruff F823).
        importlib.import_module("torch.distributed.nn")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns = True
    return Dist(rank, world, local_rank, device, owns)


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def all_ranks_finite(loss: torch.Tensor, d: Dist) -> bool:
    """Every rank must skip a step together, or DDP's gradient all-reduce would hang."""
    flag = torch.isfinite(loss.detach()).float().reshape(1)
    if d.world > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def mean_over_ranks(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """`values` averaged over the ranks (in place); unchanged in a single process."""
    if d.world > 1:
        dist.all_reduce(values)
        values /= d.world
    return values

"""Data-parallel context from torchrun's environment.

``torchrun --standalone --nproc_per_node N archbench run ...`` (or multi-node with its
rendezvous) sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`context` reads them and
joins the process group (gloo on CPU, NCCL on CUDA). Without them it is a world of one and
nothing is initialised. Only rank 0 writes rows, checkpoints and progress.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def device(self, requested: str) -> str:
        """Each rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
        if self.enabled and requested == "cuda":
            return f"cuda:{self.local_rank}"
        return requested

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        """Sums of ``values`` over all ranks (one collective)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def same_everywhere(self, flag: bool, device: torch.device) -> bool:
        """True when ``flag`` holds on every rank (so all ranks take the same branch)."""
        return self.all_sum([float(flag)], device)[0] == self.world_size


def from_env() -> Dist:
    """The launch as torchrun describes it (a world of one when not under torchrun)."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return Dist()
    return Dist(rank=int(os.environ["RANK"]), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                world_size=int(os.environ["WORLD_SIZE"]))


def init(ctx: Dist, device: str, timeout_s: float = 300.0) -> None:
    """Join the process group (once). ``timeout_s`` bounds a collective that waits on a rank
    that died, so the survivors fail instead of hanging."""
    if not ctx.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


def lost_peer(ctx: Dist, error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because another rank went away (a killed or
    crashed process), as opposed to a bug on this rank."""
    if not ctx.enabled:
        return False
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return any(s in text for s in ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
                                   "NCCL communicator was aborted", "Socket Timeout"))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

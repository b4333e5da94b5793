"""Data-parallel plumbing: process group from torchrun/accelerate env vars and reductions.

Every helper is a no-op (or the identity) in a single process, so evaluation code can call
:func:`reduce_metrics` / :func:`gather_objects` unconditionally.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "barrier", "broadcast_object", "dist_info", "gather_objects",
           "init_distributed", "is_main_process", "reduce_metrics"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size and local rank of this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def dist_info() -> DistInfo:
    """The current process group's view (single process when none is initialised)."""
    if not _active():
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(),
                    int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def init_distributed(use_cuda: bool) -> DistInfo:
    """Join the process group described by ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``.

    Does nothing when ``WORLD_SIZE`` is unset or 1, reuses a group that a launcher already
    initialised, and otherwise initialises one (``nccl`` on CUDA, ``gloo`` on CPU) from the
    ``env://`` rendezvous (``MASTER_ADDR``/``MASTER_PORT``).
    """
    if dist.is_available() and dist.is_initialized():
        return dist_info()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; launch with "
                         "torchrun or accelerate launch, or unset WORLD_SIZE")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    log.info("joined process group: rank %d of %d (%s)", rank, world, backend)
    return DistInfo(rank, world, local_rank)


def is_main_process() -> bool:
    """True on rank 0 (and in a single process)."""
    return not _active() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _active():
        dist.barrier()


def _reduce_device() -> torch.device:
    if _active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks of a float64 copy of ``values`` (returned on its device)."""
    if not _active():
        return values.detach().double()
    buf = values.detach().to(_reduce_device(), torch.float64).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(values.device)


def reduce_metrics(sums: Mapping[str, float | torch.Tensor],
                   count: float | torch.Tensor | None = None) -> dict[str, float]:
    """Sum per-rank metric totals over ranks; divide by the summed ``count`` when given.

    Typical use in an ``eval_fn`` over a rank's shard:
    ``reduce_metrics({"acc": n_correct}, count=n_seen)`` gives the global accuracy on every rank.
    """
    keys = list(sums)
    vals = [float(sums[k]) for k in keys] + ([float(count)] if count is not None else [])
    total = all_reduce_sum(torch.tensor(vals, dtype=torch.float64)).tolist()
    if count is None:
        return dict(zip(keys, total, strict=True))
    denom = total[-1]
    return {k: (v / denom if denom else float("nan"))
            for k, v in zip(keys, total[:-1], strict=True)}


def gather_objects(obj: Any) -> list[Any]:
    """List of ``obj`` from every rank, in rank order, on every rank (``[obj]`` alone)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (identity in a single process)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]

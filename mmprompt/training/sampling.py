"""Deterministic, resumable, rank-sharded batch order."""

from __future__ import annotations

import math

import torch

__all__ = ["epoch_batches", "micro_batches_per_epoch"]


def _shard_size(n: int, world_size: int, drop_last: bool) -> int:
    return n // world_size if drop_last else math.ceil(n / world_size)


def micro_batches_per_epoch(n: int, batch_size: int, *, world_size: int = 1,
                            drop_last: bool = False) -> int:
    """Number of micro-batches each rank sees per epoch (the same on every rank)."""
    shard = _shard_size(n, world_size, drop_last)
    return shard // batch_size if drop_last else math.ceil(shard / batch_size)


def epoch_batches(n: int, batch_size: int, *, epoch: int, seed: int, rank: int = 0,
                  world_size: int = 1, shuffle: bool = True,
                  drop_last: bool = False) -> list[list[int]]:
    """Index batches of ``rank`` for ``epoch``: a function of its arguments only.

    The epoch's permutation comes from a generator seeded with ``seed + epoch``; like
    ``DistributedSampler`` it is padded by wrapping (or truncated with ``drop_last``) to a
    multiple of ``world_size`` and dealt round-robin, so rank r gets positions r, r+W, ...
    With W ranks of batch b, step k of all ranks together covers the same examples as step k
    of one rank with batch W*b. ``drop_last`` drops the incomplete last batch.
    """
    if n <= 0:
        raise ValueError(f"dataset size n={n} is invalid; allowed: n >= 1")
    if shuffle:
        gen = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(n, generator=gen).tolist()
    else:
        order = list(range(n))
    shard = _shard_size(n, world_size, drop_last)
    total = shard * world_size
    if total > n:
        order = (order * math.ceil(total / n))[:total]
    mine = order[:total][rank::world_size]
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches

"""Splitting batches over the workers of a distributed run (index arithmetic only).

Shards follow MXNet's ``split_and_load``: of a batch of ``b`` examples split over ``W``
workers, the first ``W - 1`` get ``b // W`` each and the last the rest. See
:mod:`d2lft.engine.dist`.
"""

from __future__ import annotations

import numpy as np


def shard_bounds(size: int, world: int, rank: int) -> tuple[int, int]:
    """``(start, stop)`` of rank `rank`'s part of a batch of `size` examples split over
    `world` ranks, as MXNet's ``split_and_load`` splits it (the last part takes the
    remainder)."""
    step = size // world
    start = rank * step
    stop = size if rank == world - 1 else start + step
    return start, stop


def shard(items, world: int, rank: int):
    """Rank `rank`'s part of the sequence or array `items` (see :func:`shard_bounds`)."""
    if world == 1:
        return items
    start, stop = shard_bounds(len(items), world, rank)
    return items[start:stop]


def sharded_batches(order, batch_size: int, world: int, rank: int):
    """Rank `rank`'s shard of each global batch of `order` (an epoch's permutation of
    example indices, the same on every worker), as lists."""
    for start in range(0, len(order), batch_size):
        yield list(shard(order[start : start + batch_size], world, rank))


def rank_seed(base: int, rank: int) -> int:
    """A seed for rank `rank`'s own random transforms, from `base` (drawn alike on every
    worker from the epoch's shared stream): independent streams per rank, repeatable
    for a given run seed and epoch."""
    return int(np.random.SeedSequence([int(base), int(rank)]).generate_state(1)[0])

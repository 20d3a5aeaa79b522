"""Which shards and batches a (rank, worker) reads in an epoch, and where a resumed worker starts.

Per epoch the full shard list is shuffled with a seed shared by all ranks (so ranks see different
shards every epoch), then split by rank (rank r gets shards r::world, as `wds.split_by_node` does)
and by worker role (role j gets j::workers of those, as `wds.split_by_worker` would for worker j).
Every worker of every rank yields the same number of batches (the minimum over all of them), so
the data position is a single number: (epoch, batches consumed).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

from shardformat import ShardError
from trainer.data.shards import ShardInfo


def epoch_shard_order(shards: list[ShardInfo], seed: int, epoch: int, shuffle: bool) -> list[ShardInfo]:
    order = list(shards)
    if shuffle:
        random.Random(f"shards-{seed}-{epoch}").shuffle(order)
    return order


def split_for(order: list[ShardInfo], rank: int, world: int, worker: int, workers: int) -> list[ShardInfo]:
    """The shards of one (rank, worker); the same slicing `wds.split_by_node`/`split_by_worker` do."""
    return order[rank::world][worker::workers]


def batches_per_worker(
    shards: list[ShardInfo], world: int, workers: int, batch_size: int, seed: int, epoch: int, shuffle: bool
) -> int:
    order = epoch_shard_order(shards, seed, epoch, shuffle)
    if len(order) < world * workers:
        raise ShardError(
            f"{len(order)} shards for {world} rank(s) x {workers} worker(s): every worker needs at least one "
            f"shard (rebuild with smaller shards or lower data.num_workers)"
        )
    per_worker = [
        sum(s.samples for s in split_for(order, r, world, w, workers)) // batch_size
        for r in range(world)
        for w in range(workers)
    ]
    return min(per_worker)


def worker_role(worker: int, workers: int, consumed: int) -> tuple[int, int]:
    """(role, batches of that role already consumed) of DataLoader worker `worker` after `consumed` batches.

    The loader hands out batches round-robin from worker 0. After k consumed batches the next one is
    due from role k % W, so worker i plays role (i + k) % W; role j has already made ceil((k - j) / W)
    of its batches.
    """
    role = (worker + consumed) % workers
    return role, max(0, -(-(consumed - role) // workers))


def all_shards(src: Iterator[Any]) -> Iterator[Any]:
    """wds stage: every shard (a stream not split across ranks)."""
    return src


def take_role(role: int, workers: int):
    """wds stage: shards role::workers (`wds.split_by_worker` for worker `role`)."""

    def stage(src: Iterator[Any]) -> Iterator[Any]:
        return itertools.islice(src, role, None, workers)

    return stage

"""Small pure helpers for multi-process training, callable on one CPU (open_clip style).

Every process keeps the same copy of shared training state (the dynamic hard-negative miner's arrays):
each process contributes what it saw, everyone receives everything in rank order and applies it the
same way, so no process ever needs another's copy.
"""

from __future__ import annotations


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without an initialised process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_objects(obj) -> list:
    """Every process's `obj`, in rank order (a one-element list when not distributed)."""
    import torch.distributed as dist

    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def shard(items, rank: int, world: int):
    """This rank's share of `items` (every world-th item from `rank`); `unshard` puts shares back."""
    return items[rank::world]


def unshard(shares: list, out):
    """Inverse of `shard`: write share k (from rank k) into `out[k::world]`; returns `out`."""
    for k, share in enumerate(shares):
        out[k::len(shares)] = share
    return out

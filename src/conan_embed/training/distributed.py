"""Small pure helpers for multi-process training, callable on one CPU (open_clip style).

- Shared training state (the dynamic hard-negative miner's arrays): each process contributes what it
  saw, everyone receives everything in rank order and applies it the same way.
- Cross-GPU batch balance: each rank's role (`cbb_roles`), and the gather that keeps gradients
  (`gather_with_grad`) which brings every retrieval rank's negatives to every query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from conan_embed.errors import InputError

if TYPE_CHECKING:
    from torch import Tensor


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


@dataclass(frozen=True)
class RankRole:
    """What one process does in a cross-GPU batch balance step."""

    negative_shares: tuple[int, ...]  # shares of every retrieval row's hard negatives it embeds (empty: none)
    sts_batches: tuple[int, ...]  # which of the step's STS batches it runs (empty: none)

    @property
    def retrieval(self) -> bool:
        return bool(self.negative_shares)


def cbb_roles(world_size: int, sts_ranks: int = 1, retrieval_ranks: int | None = None) -> list[RankRole]:
    """Each rank's role (Conan-Embedding §3.3): ranks 0 .. W-S-1 retrieve (the same rows, share k of each
    row's negatives), ranks W-S .. W-1 run one STS batch each. One process plays every role: N virtual
    retrieval ranks (`retrieval_ranks`, default 1) and S virtual STS ranks.

    >>> cbb_roles(4)
    [RankRole(negative_shares=(0,), sts_batches=()), RankRole(negative_shares=(1,), sts_batches=()), \
RankRole(negative_shares=(2,), sts_batches=()), RankRole(negative_shares=(), sts_batches=(0,))]
    >>> cbb_roles(1, sts_ranks=1, retrieval_ranks=3)
    [RankRole(negative_shares=(0, 1, 2), sts_batches=(0,))]
    """
    if world_size == 1:
        return [RankRole(tuple(range(retrieval_ranks or 1)), tuple(range(sts_ranks)))]
    n = world_size - sts_ranks
    if n < 1:
        raise InputError(f"cbb with {world_size} processes and sts_ranks {sts_ranks} leaves no retrieval rank",
                         field="composer.sts_ranks")
    if retrieval_ranks not in (None, n):
        raise InputError(f"cbb with {world_size} processes and sts_ranks {sts_ranks} has {n} retrieval ranks, but "
                         f"composer.retrieval_ranks is {retrieval_ranks} (leave it unset, or set it to {n})",
                         field="composer.retrieval_ranks")
    return [RankRole((r,), ()) for r in range(n)] + [RankRole((), (j,)) for j in range(sts_ranks)]


def gather_with_grad(local: Tensor, group=None) -> Tensor:
    """Every process's `local` (same shape everywhere), stacked in rank order; gradients flow back to
    each process's own part (the backward sums what every process's loss asked of it)."""
    import torch
    from torch.distributed.nn.functional import all_gather

    return torch.stack(all_gather(local.contiguous(), group=group))

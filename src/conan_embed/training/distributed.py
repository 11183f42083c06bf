"""Small pure helpers for multi-process training, callable on one CPU (open_clip style).

- Shared training state (the dynamic hard-negative miner's arrays): each process contributes what it
  saw, everyone receives everything in rank order and applies it the same way.
- Cross-GPU batch balance: each rank's role (`cbb_roles`), and the gather that keeps gradients
  (`gather_with_grad`) which brings every retrieval rank's negatives to every query.
- In-batch negatives across processes: the same gather over rows padded to one size (`pad_rows`), and
  each process's share of a global batch (`split_global_batch`).
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


def pad_rows(tensor: Tensor, rows: int, dim: int = 0) -> Tensor:
    """`tensor` with zeros appended along `dim` up to `rows` (gathers need the same shape everywhere)."""
    import torch

    missing = rows - tensor.shape[dim]
    if missing < 0:
        raise ValueError(f"{tensor.shape[dim]} rows do not fit in {rows}")
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor, tensor.new_zeros(shape)], dim)


def gather_with_grad(local: Tensor, group=None) -> Tensor:
    """Every process's `local` (same shape everywhere), stacked in rank order; gradients flow back to
    each process's own part (the backward sums what every process's loss asked of it)."""
    import torch
    from torch.distributed.nn.functional import all_gather

    return torch.stack(all_gather(local.contiguous(), group=group))


def gather_rows(positive: Tensor, negatives: Tensor | None, width: int, group=None):
    """In-batch negatives across processes: every process's positives [W·width, D] and negatives
    [W·width, K, D], in rank order and with gradients (rows padded to `width`); where this process's rows
    start (`offset`); which rows are real (`valid`); and the scale that makes the processes' losses,
    averaged as DDP averages gradients, equal one process's mean loss over all rows:
    W · (rows here) / (rows everywhere), 1 when every process has `width` rows.

    Returns (positive, negatives, offset, valid, scale)."""
    import torch
    import torch.distributed as dist

    rows = positive.shape[0]
    valid = (torch.arange(width, device=positive.device) < rows).float()
    valid = gather_with_grad(valid, group=group)  # [W, width]
    world, rank = valid.shape[0], dist.get_rank(group)
    positive = gather_with_grad(pad_rows(positive.float(), width), group=group).flatten(0, 1)
    if negatives is not None:
        negatives = gather_with_grad(pad_rows(negatives.float(), width), group=group).flatten(0, 1)
    valid = valid.flatten().bool()
    return positive, negatives, rank * width, valid, world * rows / int(valid.sum())


def split_global_batch(rows: tuple[int, ...], world: int) -> list[tuple[int, ...]]:
    """A global batch's rows shared out over `world` processes in rank order, consecutively, sizes
    differing by at most one (a batch that lost duplicate rows is not a multiple of `world`). Rank k's
    rows are then the k-th block of the one-process batch, so gathering every rank's rows in rank order
    gives back the one-process batch in its order.

    >>> split_global_batch((5, 1, 4, 2, 3), 2)
    [(5, 1, 4), (2, 3)]
    """
    size, extra = divmod(len(rows), world)
    out, start = [], 0
    for rank in range(world):
        end = start + size + (rank < extra)
        out.append(tuple(rows[start:end]))
        start = end
    return out

"""The cross-GPU batch balance loss of Conan-Embedding (arXiv 2408.15710, §3.3, Eq. 3).

Two parts: `CBBLoss` is Eq. 3's retrieval term (every query against the hard negatives of every
retrieval rank), and `cbb_step_loss` composes a whole step from the tasks' terms (retrieval, and β times
the STS batches' CoSENT), scaled for the process that computes them. The trainer builds a CBB step with
these two and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from torch import Tensor, nn

from conan_embed.errors import InputError
from conan_embed.losses._common import positive_finite
from conan_embed.losses.infonce import info_nce_details


class CBBOutput(NamedTuple):
    """The retrieval term and the detached per-example cosines dynamic mining records."""

    loss: Tensor
    positive_scores: Tensor
    """[B] cos(q_i, p_i)."""
    negative_scores: Tensor
    """[B] mean cos(q_i, n) over the negatives of every retrieval rank."""


def _check_negatives(negatives, query: Tensor) -> Tensor:
    batch, dim = query.shape
    ok = (isinstance(negatives, Tensor) and negatives.is_floating_point() and negatives.ndim == 4
          and negatives.shape[0] > 0 and negatives.shape[1] == batch and negatives.shape[2] > 0
          and negatives.shape[3] == dim)
    if not ok:
        got = tuple(negatives.shape) if isinstance(negatives, Tensor) else type(negatives).__name__
        raise InputError(f"negatives must be [N, B, K, D] with B={batch}, N, K >= 1 and D={dim} matching query "
                         f"(negatives[k, i] = query i's K negatives held by retrieval rank k), got {got}",
                         field="negatives")
    return negatives


def cbb_details(query: Tensor, positive: Tensor, negatives: Tensor, *, temperature: float = 0.05,
                in_batch: bool = False) -> CBBOutput:
    """`cbb_loss` with the per-example scores; see `CBBLoss` for the formula."""
    _check_negatives(negatives, query)
    n_ranks, batch, k, dim = negatives.shape
    # every retrieval rank's negatives of query i, side by side: the candidates of Eq. 3's inner sum
    per_query = negatives.permute(1, 0, 2, 3).reshape(batch, n_ranks * k, dim)
    out = info_nce_details(query, positive, per_query, temperature, in_batch)
    return CBBOutput(out.loss, out.positive_scores, out.negative_scores)


def cbb_loss(query: Tensor, positive: Tensor, negatives: Tensor, *, temperature: float = 0.05,
             in_batch: bool = False) -> Tensor:
    """The CBB retrieval term (a scalar); see `CBBLoss` for the formula and the inputs."""
    return cbb_details(query, positive, negatives, temperature=temperature, in_batch=in_batch).loss


class CBBLoss(nn.Module):
    """Cross-GPU batch balance, retrieval term: each query is contrasted with the hard negatives held by
    every retrieval rank.

    Conan-Embedding (arXiv 2408.15710, §3.3, Eq. 3), with s the cosine similarity and τ the temperature::

        L_CBB = -(1/B) Σ_i log( e^{s(q_i,p_i)/τ} / (e^{s(q_i,p_i)/τ} + Σ_{k=1..N} Σ_j e^{s(q_i,n_{k,i,j})/τ}) )

    The N retrieval ranks share the queries and positives and hold different negatives of each query
    (`negatives[k, i]`: query i's K negatives on rank k). Eq. 3's second term, β · CoSENT over the STS
    rank's batch, is added by `cbb_step_loss`, which composes a step of several tasks and STS batches.

    ``in_batch=True`` also puts every other query's positive and negatives into each query's
    denominator, as the project's `InfoNCELoss` does for the sequential schedule; ``False`` is Eq. 3
    as written. With N = 1 it equals `info_nce` with the same ``in_batch``.

    Inputs: query ``[B, D]``, positive ``[B, D]``, negatives ``[N, B, K, D]``. ``details`` returns
    `CBBOutput` (the loss and the per-example scores that dynamic hard-negative mining reads).

    Example::

        >>> import torch
        >>> loss_fn = CBBLoss(temperature=0.05)
        >>> q, p, n = torch.randn(4, 32), torch.randn(4, 32), torch.randn(3, 4, 2, 32)
        >>> loss_fn(q, p, n).shape
        torch.Size([])
    """

    def __init__(self, temperature: float = 0.05, in_batch: bool = False):
        super().__init__()
        self.temperature = positive_finite(temperature, "temperature")
        self.in_batch = in_batch

    def forward(self, query, positive, negatives) -> Tensor:
        return self.details(query, positive, negatives).loss

    def details(self, query, positive, negatives) -> CBBOutput:
        return cbb_details(query, positive, negatives, temperature=self.temperature, in_batch=self.in_batch)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, in_batch={self.in_batch}"


def cbb_step_loss(retrieval: Sequence[Tensor], sts: Sequence[Tensor], *, beta: float = 0.8, sts_batches: int = 1,
                  processes: int = 1, retrieval_processes: int = 1):
    """A CBB step's loss, or one process's part of it (Eq. 3 over several tasks)::

        L = Σ_t L_t + β · (1/S) Σ_{j=1..S} Σ_u L_{u,j}

    `retrieval`: the weighted retrieval terms L_t (`CBBLoss`, one per retrieval task, times its
    weight); `sts`: the weighted CoSENT terms L_{u,j} of STS task u on STS batch j that this process
    computed; S = `sts_batches`, the STS ranks of a step (0: no STS task). β = 0.8 in the paper.

    With one process (holding every rank, real or virtual) this is L. With W = `processes` processes, of
    which N = `retrieval_processes` compute the (identical) retrieval terms and the other S one STS batch
    each, every process returns (W/N)·Σ_t L_t + β·(W/S)·Σ L_{u,j}: data-parallel training averages the
    processes' gradients, and the gather of the negatives sums the N ranks' gradients into each rank's own
    negatives, so the averaged gradient is L's (tests/training/test_cbb_composition.py).

    >>> import torch
    >>> float(cbb_step_loss([torch.tensor(1.0)], [torch.tensor(2.0), torch.tensor(4.0)], beta=0.5, sts_batches=2))
    2.5
    """
    beta = float(beta)
    if beta < 0:
        raise InputError(f"beta must be >= 0, got {beta}", field="beta")
    if sts and sts_batches < 1:
        raise InputError(f"STS terms need sts_batches >= 1, got {sts_batches}", field="sts_batches")
    if not 1 <= retrieval_processes <= processes:
        raise InputError(f"retrieval_processes must be 1..processes ({processes}), got {retrieval_processes}",
                         field="retrieval_processes")
    total = 0.0
    if retrieval:
        total = total + processes / retrieval_processes * sum(retrieval)
    if sts:
        total = total + beta * processes / sts_batches * sum(sts)
    return total

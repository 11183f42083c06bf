"""The cross-GPU batch balance loss of Conan-Embedding (arXiv 2408.15710, §3.3, Eq. 3)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from conan_embed.errors import InputError
from conan_embed.losses._common import positive_finite
from conan_embed.losses.cosent import cosent
from conan_embed.losses.infonce import info_nce_details


class CBBOutput(NamedTuple):
    """The loss, its two terms, and the detached per-example cosines dynamic mining records."""

    loss: Tensor
    retrieval_loss: Tensor
    sts_loss: Tensor | None
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


def cbb_details(query: Tensor, positive: Tensor, negatives: Tensor, sts_a: Tensor | None = None,
                sts_b: Tensor | None = None, sts_labels=None, *, temperature: float = 0.05, scale: float = 20.0,
                beta: float = 0.8, in_batch: bool = False) -> CBBOutput:
    """`cbb_loss` with its terms and per-example scores; see `CBBLoss` for the formula."""
    _check_negatives(negatives, query)
    beta = float(beta)
    if beta < 0:
        raise InputError(f"beta must be >= 0, got {beta}", field="beta")
    n_ranks, batch, k, dim = negatives.shape
    # every retrieval rank's negatives of query i, side by side: the candidates of Eq. 3's inner sum
    per_query = negatives.permute(1, 0, 2, 3).reshape(batch, n_ranks * k, dim)
    retrieval = info_nce_details(query, positive, per_query, temperature, in_batch)
    sts = None
    if any(x is not None for x in (sts_a, sts_b, sts_labels)):
        if sts_a is None or sts_b is None or sts_labels is None:
            raise InputError("the STS term needs sts_a, sts_b and sts_labels together", field="sts_labels")
        sts = cosent(sts_a, sts_b, sts_labels, scale)
    loss = retrieval.loss if sts is None else retrieval.loss + beta * sts
    return CBBOutput(loss, retrieval.loss, sts, retrieval.positive_scores, retrieval.negative_scores)


def cbb_loss(query: Tensor, positive: Tensor, negatives: Tensor, sts_a: Tensor | None = None,
             sts_b: Tensor | None = None, sts_labels=None, *, temperature: float = 0.05, scale: float = 20.0,
             beta: float = 0.8, in_batch: bool = False) -> Tensor:
    """The CBB loss (a scalar); see `CBBLoss` for the formula and the inputs."""
    return cbb_details(query, positive, negatives, sts_a, sts_b, sts_labels, temperature=temperature, scale=scale,
                       beta=beta, in_batch=in_batch).loss


class CBBLoss(nn.Module):
    """Cross-GPU batch balance loss: every step trains retrieval and STS together, and each query is
    contrasted with the hard negatives held by every retrieval rank.

    Conan-Embedding (arXiv 2408.15710, §3.3, Eq. 3), with s the cosine similarity and τ the temperature::

        L = -(1/B) Σ_i log( e^{s(q_i,p_i)/τ} / (e^{s(q_i,p_i)/τ} + Σ_{k=1..N} Σ_j e^{s(q_i,n_{k,i,j})/τ}) )
            + β · CoSENT(sts_a, sts_b, sts_labels; scale)

    The N retrieval ranks share the queries and positives and hold different negatives of each query
    (`negatives[k, i]`: query i's K negatives on rank k); one rank adds a (larger) STS batch. β = 0.8 in
    the paper; the STS term is left out when no STS batch is given.

    ``in_batch=True`` also puts every other query's positive and negatives into each query's
    denominator, as the project's `InfoNCELoss` does for the sequential schedule; ``False`` is Eq. 3
    as written. With N = 1 and no STS batch it equals `info_nce` with the same ``in_batch``.

    Inputs: query ``[B, D]``, positive ``[B, D]``, negatives ``[N, B, K, D]``, optional sts_a / sts_b
    ``[B_sts, D]`` and sts_labels ``[B_sts]``. ``details`` returns `CBBOutput` (both terms and the
    per-example scores that dynamic hard-negative mining reads).

    Example::

        >>> import torch
        >>> loss_fn = CBBLoss(temperature=0.05, beta=0.8)
        >>> q, p, n = torch.randn(4, 32), torch.randn(4, 32), torch.randn(3, 4, 2, 32)
        >>> a, b, y = torch.randn(8, 32), torch.randn(8, 32), torch.rand(8)
        >>> loss_fn(q, p, n, a, b, y).shape
        torch.Size([])
    """

    def __init__(self, temperature: float = 0.05, scale: float = 20.0, beta: float = 0.8, in_batch: bool = False):
        super().__init__()
        self.temperature = positive_finite(temperature, "temperature")
        self.scale = positive_finite(scale, "scale")
        self.beta, self.in_batch = float(beta), in_batch

    def forward(self, query, positive, negatives, sts_a=None, sts_b=None, sts_labels=None) -> Tensor:
        return self.details(query, positive, negatives, sts_a, sts_b, sts_labels).loss

    def details(self, query, positive, negatives, sts_a=None, sts_b=None, sts_labels=None) -> CBBOutput:
        return cbb_details(query, positive, negatives, sts_a, sts_b, sts_labels, temperature=self.temperature,
                           scale=self.scale, beta=self.beta, in_batch=self.in_batch)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, scale={self.scale}, beta={self.beta}, in_batch={self.in_batch}"

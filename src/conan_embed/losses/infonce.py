"""InfoNCE with in-batch and hard negatives: the retrieval loss of Conan-Embedding (arXiv 2408.15710)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conan_embed.errors import InputError
from conan_embed.losses._common import embeddings_2d, positive_finite, upcast


class InfoNCEOutput(NamedTuple):
    """The loss plus the detached per-example cosines that dynamic hard-negative mining records."""

    loss: Tensor
    positive_scores: Tensor
    """[B] cos(q_i, p_i)."""
    negative_scores: Tensor | None
    """[B] mean over k of cos(q_i, n_ik); None without negatives."""


def info_nce_details(query: Tensor, positive: Tensor, negatives: Tensor | None = None,
                     temperature: float = 0.05, in_batch: bool = True, *, offset: int = 0,
                     valid: Tensor | None = None) -> InfoNCEOutput:
    """`info_nce`, plus each example's positive and mean hard-negative cosine (detached).

    The scores come from the same forward pass as the loss, so dynamic hard-negative mining can
    track `S_now` for every example without embedding its negatives again.

    `positive` and `negatives` may hold more rows than `query`: every process's rows, gathered for
    in-batch negatives across processes. Query i's own positive and negatives are then row
    `offset + i`, and `valid` ([rows] bool) marks the rows that are real (a process with fewer rows
    pads its share); the other rows' texts are candidates too.
    """
    temperature = positive_finite(temperature, "temperature")
    embeddings_2d(query, "query")
    embeddings_2d(positive, "positive")
    batch, dim = query.shape
    rows = positive.shape[0]
    if positive.shape[1] != dim or not 0 <= offset <= rows - batch:
        raise InputError(f"positive must be [R, D] with D={dim} and R >= offset + B = {offset + batch}, got "
                         f"{tuple(positive.shape)} (offset {offset})", field="positive")
    if negatives is not None and not (
        isinstance(negatives, Tensor) and negatives.is_floating_point() and negatives.ndim == 3
        and negatives.shape[0] == rows and negatives.shape[1] > 0 and negatives.shape[2] == dim
    ):
        got = tuple(negatives.shape) if isinstance(negatives, Tensor) else type(negatives).__name__
        raise InputError(f"negatives must be [B, K, D] with B={rows}, K>=1 and D={dim} matching positive, "
                         f"got {got}", field="negatives")
    if valid is not None and (valid.dtype != torch.bool or valid.shape != (rows,)):
        raise InputError(f"valid must be a bool [{rows}] tensor, got {valid.dtype} {tuple(valid.shape)}", field="valid")
    if negatives is None and not in_batch:
        # the only candidate would be the positive itself: the loss is exactly 0 and nothing trains
        raise InputError("in_batch=False needs negatives (with no candidates besides the positive "
                         "the loss is always 0)", field="negatives")

    q, p = F.normalize(query, dim=-1), F.normalize(positive, dim=-1)
    n = None if negatives is None else F.normalize(negatives, dim=-1)
    own = slice(offset, offset + batch)
    positive_cos = upcast((q * p[own]).sum(-1))
    own_negative_cos = None if n is None else upcast(torch.einsum("bd,bkd->bk", q, n[own]))
    if in_batch:
        candidates = p if n is None else torch.cat([p, n.reshape(-1, dim)])
        logits = upcast(q @ candidates.T) / temperature  # [B, R + R*K]; column offset + i is query i's positive
        if valid is not None and not bool(valid.all()):
            keep = valid if n is None else torch.cat([valid, valid.repeat_interleave(n.shape[1])])
            logits = logits.masked_fill(~keep, -torch.inf)
        target = torch.arange(offset, offset + batch, device=query.device)
    else:
        logits = torch.cat([positive_cos[:, None], own_negative_cos], dim=1) / temperature
        target = torch.zeros(batch, dtype=torch.long, device=query.device)
    return InfoNCEOutput(
        loss=F.cross_entropy(logits, target),
        positive_scores=positive_cos.detach(),
        negative_scores=None if own_negative_cos is None else own_negative_cos.detach().mean(dim=1),
    )


def info_nce(query: Tensor, positive: Tensor, negatives: Tensor | None = None,
             temperature: float = 0.05, in_batch: bool = True) -> Tensor:
    """The InfoNCE loss (a scalar); see `InfoNCELoss` for the formula and the candidate set."""
    return info_nce_details(query, positive, negatives, temperature, in_batch).loss


class InfoNCELoss(nn.Module):
    """InfoNCE over cosine similarities, with in-batch and hard negatives.

    Conan-Embedding (arXiv 2408.15710, §3) pre-trains with in-batch negatives and fine-tunes
    retrieval with InfoNCE on (query, positive, negatives)::

        L = -(1/B) Σ_i log( exp(s(q_i, p_i)/τ) / Σ_{c ∈ C_i} exp(s(q_i, c)/τ) )

    with s the cosine similarity and τ the temperature. The paper writes a sum over queries; we
    take the mean, as sentence-transformers and FlagEmbedding do, so the learning rate does not
    depend on the batch size.

    - ``in_batch=True``: C_i = every positive and every hard negative in the batch (B + B*K
      candidates). This equals sentence-transformers' ``MultipleNegativesRankingLoss(model,
      scale=1/τ)`` on (anchor, positive, negative_1..K) columns and FlagEmbedding's candidate set.
    - ``in_batch=False``: C_i = p_i and query i's own K negatives; negatives are required.

    The paper gives no τ: 0.05 is the sentence-transformers default (scale 20), FlagEmbedding
    uses 0.02.

    Inputs (embeddings, not texts: the trainer runs the model):
        query ``[B, D]``, positive ``[B, D]``, negatives ``[B, K, D]`` or None.

    ``forward`` returns the scalar loss; ``details`` also returns the detached per-example
    positive and mean hard-negative cosines (`InfoNCEOutput`) for dynamic hard-negative mining.

    In-batch negatives across processes: give ``details`` every process's positives and negatives
    (gathered, ``[R, D]`` and ``[R, K, D]``) with ``offset`` (where this process's rows start) and
    ``valid`` (real rows); the candidates are then all R rows' texts.

    Example::

        >>> import torch
        >>> loss_fn = InfoNCELoss(temperature=0.05)
        >>> q, p, n = torch.randn(4, 32), torch.randn(4, 32), torch.randn(4, 7, 32)
        >>> loss_fn(q, p, n).shape
        torch.Size([])
        >>> loss_fn.details(q, p, n).negative_scores.shape
        torch.Size([4])
    """

    def __init__(self, temperature: float = 0.05, in_batch: bool = True):
        super().__init__()
        self.temperature = positive_finite(temperature, "temperature")
        self.in_batch = in_batch

    def forward(self, query: Tensor, positive: Tensor, negatives: Tensor | None = None) -> Tensor:
        return self.details(query, positive, negatives).loss

    def details(self, query: Tensor, positive: Tensor, negatives: Tensor | None = None, *, offset: int = 0,
                valid: Tensor | None = None) -> InfoNCEOutput:
        return info_nce_details(query, positive, negatives, self.temperature, self.in_batch, offset=offset,
                                valid=valid)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, in_batch={self.in_batch}"

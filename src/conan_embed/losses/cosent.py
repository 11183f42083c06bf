"""CoSENT: the STS loss of Conan-Embedding (arXiv 2408.15710)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conan_embed.errors import InputError
from conan_embed.losses._common import embeddings_2d, positive_finite, same_shape, upcast


def cosent(emb1: Tensor, emb2: Tensor, labels: Tensor | Sequence[float], scale: float = 20.0) -> Tensor:
    """The CoSENT loss (a scalar); see `CoSENTLoss` for the formula."""
    scale = positive_finite(scale, "scale")
    embeddings_2d(emb1, "emb1")
    same_shape(embeddings_2d(emb2, "emb2"), "emb2", emb1, "emb1")
    try:
        labels = torch.as_tensor(labels, device=emb1.device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"labels must be numbers, one per pair: {err}", field="labels") from None
    if labels.numel() != len(emb1):
        raise InputError(f"labels must hold one score per pair (B={len(emb1)}), got shape {tuple(labels.shape)}",
                         field="labels")
    labels = labels.reshape(-1)

    scores = scale * upcast((F.normalize(emb1, dim=-1) * F.normalize(emb2, dim=-1)).sum(-1))
    # diff[i, j] = scale * (cos_j - cos_i), kept only where pair i is labelled above pair j;
    # the leading 0 is the "1 +" inside the log
    diff = (scores[None, :] - scores[:, None]).masked_fill(~(labels[:, None] > labels[None, :]), -torch.inf)
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff.flatten()]), dim=0)


class CoSENTLoss(nn.Module):
    """CoSENT (Su 2022; Huang et al., TASLP 2024) on (text1, text2, score) pairs.

    Conan-Embedding (arXiv 2408.15710, §3) fine-tunes STS data with::

        L = log(1 + Σ_{(i, j): label_i > label_j} exp(scale * (cos_j - cos_i)))

    where cos_i = cos(emb1_i, emb2_i): every pair must score above every pair labelled lower.
    Only the order of the labels matters, not their range. ``scale`` = 1/τ; 20 (τ = 0.05) is the
    sentence-transformers default. Equals sentence-transformers' ``CoSENTLoss(model, scale)``.

    The sum is over all B² ordered pairs; at STS batch sizes (32 in the paper) that is cheaper
    than being clever.

    Inputs: emb1 ``[B, D]``, emb2 ``[B, D]``, labels ``[B]`` (float, higher = more similar).

    Example::

        >>> import torch
        >>> loss_fn = CoSENTLoss(scale=20.0)
        >>> loss_fn(torch.randn(3, 16), torch.randn(3, 16), torch.tensor([4.5, 1.0, 3.2])).shape
        torch.Size([])
    """

    def __init__(self, scale: float = 20.0):
        super().__init__()
        self.scale = positive_finite(scale, "scale")

    def forward(self, emb1: Tensor, emb2: Tensor, labels: Tensor | Sequence[float]) -> Tensor:
        return cosent(emb1, emb2, labels, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"

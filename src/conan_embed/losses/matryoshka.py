"""Matryoshka wrapper: one loss at several embedding lengths (Conan-Embedding, arXiv 2408.15710)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from conan_embed.errors import InputError


class LossOutput(NamedTuple):
    loss: Tensor


def _is_embedding(value) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point() and value.ndim >= 2


def _shrink(value, dim: int):
    return F.normalize(value[..., :dim], dim=-1) if _is_embedding(value) else value


class MatryoshkaLoss(nn.Module):
    """Apply an embedding-level loss at each of ``dims`` and return the weighted sum.

    Matryoshka Representation Learning (Kusupati et al., arXiv 2205.13147); Conan-Embedding
    (arXiv 2408.15710, §3) trains at 256, 512, 768, 1024, 1280, 1536 and 1792 dims::

        L = Σ_d w_d · loss(normalise(x[..., :d]) for each embedding x)

    A weighted **sum**, not a mean (weights default to 1), as in sentence-transformers'
    ``MatryoshkaLoss``; wrapped around ``InfoNCELoss`` it equals that loss around
    ``MultipleNegativesRankingLoss``.

    Every floating tensor with ndim >= 2 among the arguments is an embedding: its last dim is
    truncated to d and re-normalised (so dot-product losses see unit vectors too; cosine losses
    are unaffected by the extra normalisation). Anything else (labels, flags, None) passes through
    untouched. So both call shapes work::

        MatryoshkaLoss(InfoNCELoss(), dims=(256, 512))(query, positive, negatives)
        MatryoshkaLoss(CoSENTLoss(), dims=(256, 512))(emb1, emb2, labels)

    Example::

        >>> import torch
        >>> from conan_embed.losses import InfoNCELoss
        >>> loss_fn = MatryoshkaLoss(InfoNCELoss(), dims=(16, 32), weights=(1.0, 0.5))
        >>> loss_fn(torch.randn(4, 32), torch.randn(4, 32), torch.randn(4, 2, 32)).shape
        torch.Size([])
    """

    def __init__(self, loss: nn.Module, dims: Sequence[int], weights: Sequence[float] | None = None):
        super().__init__()
        dims = tuple(dims)
        if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in dims):
            raise InputError(f"dims must be a non-empty list of positive integers, got {list(dims)}", field="dims")
        weights = (1.0,) * len(dims) if weights is None else tuple(weights)
        if len(weights) != len(dims) or not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights):
            raise InputError(f"weights must be {len(dims)} finite numbers (one per dim in {list(dims)}), "
                             f"got {list(weights)}", field="weights")
        self.loss, self.dims, self.weights = loss, dims, tuple(float(w) for w in weights)

    def forward(self, *args, **kwargs) -> Tensor:
        return self.details(*args, **kwargs).loss

    def details(self, *args, **kwargs):
        """The inner loss's `details()` output (a `LossOutput` for losses without one) with every loss
        field (`loss`, `*_loss`) summed over the dims with their weights, and every other field (the
        per-example scores dynamic hard-negative mining reads) taken at the largest dim."""
        self._check_sizes(args, kwargs)
        sums, top, largest = {}, None, max(self.dims)
        for dim, weight in zip(self.dims, self.weights):
            a, k = tuple(_shrink(x, dim) for x in args), {n: _shrink(v, dim) for n, v in kwargs.items()}
            out = self.loss.details(*a, **k) if hasattr(self.loss, "details") else LossOutput(self.loss(*a, **k))
            for name, value in out._asdict().items():
                if (name == "loss" or name.endswith("_loss")) and value is not None:
                    sums[name] = sums.get(name, 0.0) + weight * value
            if dim == largest:
                top = out
        return top._replace(**sums)

    def _check_sizes(self, args: tuple, kwargs: dict) -> None:
        values = list(args) + list(kwargs.values())
        if not any(_is_embedding(v) for v in values):
            raise InputError("no embeddings to truncate: expected floating tensors with ndim >= 2 among the "
                             f"arguments, got {[type(v).__name__ for v in values]}")
        largest = max(self.dims)
        for index, value in enumerate(values):
            if _is_embedding(value) and value.shape[-1] < largest:
                raise InputError(f"Matryoshka dim {largest} exceeds the embedding size {value.shape[-1]} of "
                                 f"{self._name(index, kwargs, len(args))} {tuple(value.shape)}", field="dims")

    def _name(self, index: int, kwargs: dict, n_args: int) -> str:
        if index >= n_args:
            return f"argument '{list(kwargs)[index - n_args]}'"
        positional = [p.name for p in inspect.signature(self.loss.forward).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return f"argument '{positional[index]}'" if index < len(positional) else f"argument {index}"

    def extra_repr(self) -> str:
        return f"dims={self.dims}, weights={self.weights}"

import math

import pytest
import torch
from sentence_transformers.sentence_transformer import losses as st_losses
from torch import nn

from conan_embed.errors import InputError
from conan_embed.losses import CoSENTLoss, InfoNCELoss, MatryoshkaLoss, cosent, info_nce


class DotLoss(nn.Module):
    """Mean dot product: unlike the cosine losses it shows whether truncated vectors are re-normalised."""

    def forward(self, a, b, scale=1.0):
        return scale * (a * b).sum(-1).mean()


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_truncates_renormalises_and_sums_by_hand():
    a, b = t([[3.0, 4.0], [1.0, 0.0]]), t([[6.0, -8.0], [1.0, 1.0]])
    # d=1: unit vectors (1), (1) and (1), (1): dot 1 each.  d=2: (0.6, 0.8)·(0.6, -0.8) = -0.28
    # and (1, 0)·(1, 1)/√2 = 1/√2.  Weighted sum: 2·1 + 3·mean(-0.28, 1/√2)
    loss = MatryoshkaLoss(DotLoss(), dims=(1, 2), weights=(2, 3))(a, b)
    assert loss.item() == pytest.approx(2 * 1 + 3 * (-0.28 + 1 / math.sqrt(2)) / 2, rel=1e-12)


def test_non_embedding_arguments_pass_through_and_keywords_are_truncated():
    a, b = t([[3.0, 4.0]]), t([[1.0, 0.0]])
    loss = MatryoshkaLoss(DotLoss(), dims=(1,))(a, b=b, scale=5.0)
    assert loss.item() == pytest.approx(5.0, rel=1e-12)


def test_info_nce_at_each_dim_by_hand():
    q, p, n = t([[1.0, 0.0, 1.0]]), t([[1.0, 1.0, -1.0]]), t([[[1.0, -1.0, 1.0]]])
    # d=2: cos(q, p) = 1/√2, cos(q, n) = 1/√2  -> log 2
    # d=3: cos(q, p) = 0,    cos(q, n) = 2/√6  -> log(1 + e^(2/√6))
    loss = MatryoshkaLoss(InfoNCELoss(temperature=1.0, in_batch=False), dims=(2, 3), weights=(1.0, 0.5))(q, p, n)
    assert loss.item() == pytest.approx(math.log(2) + 0.5 * math.log1p(math.exp(2 / math.sqrt(6))), rel=1e-12)


def test_default_weights_sum_not_mean():
    q, p, n = torch.randn(4, 32), torch.randn(4, 32), torch.randn(4, 2, 32)
    loss = MatryoshkaLoss(InfoNCELoss(), dims=(16, 32))(q, p, n)
    torch.testing.assert_close(loss, info_nce(q[:, :16], p[:, :16], n[..., :16]) + info_nce(q, p, n))


def test_cosent_style_call_keeps_labels():
    e1, e2, labels = torch.randn(5, 32), torch.randn(5, 32), torch.tensor([0.1, 0.9, 0.4, 0.4, 0.7])
    loss = MatryoshkaLoss(CoSENTLoss(), dims=(8, 32), weights=(0.5, 1.0))(e1, e2, labels)
    torch.testing.assert_close(loss, 0.5 * cosent(e1[:, :8], e2[:, :8], labels) + cosent(e1, e2, labels))


def test_equals_sentence_transformers_matryoshka_around_mnrl(tiny_model, features):
    feats, embs = features
    dims, weights = (32, 16, 8), (1.0, 0.5, 2.0)
    st_loss = st_losses.MatryoshkaLoss(tiny_model, st_losses.MultipleNegativesRankingLoss(tiny_model, scale=20.0),
                                       list(dims), list(weights))
    theirs = st_loss([dict(feats[c]) for c in ("anchor", "positive", "negative")], None)
    ours = MatryoshkaLoss(InfoNCELoss(temperature=0.05), dims, weights)(
        embs["anchor"], embs["positive"], embs["negative"][:, None])
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-5, atol=1e-5)


def test_equals_sentence_transformers_matryoshka_around_cosent(tiny_model, features):
    feats, embs = features
    labels = torch.tensor([0.2, 0.9, 0.5, 0.1])
    st_loss = st_losses.MatryoshkaLoss(tiny_model, st_losses.CoSENTLoss(tiny_model), [32, 8])
    theirs = st_loss([dict(feats[c]) for c in ("anchor", "positive")], labels)
    ours = MatryoshkaLoss(CoSENTLoss(), (32, 8))(embs["anchor"], embs["positive"], labels)
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-5, atol=1e-5)


def test_gradients_flow():
    q, p, n = (torch.randn(*s, requires_grad=True) for s in [(4, 16), (4, 16), (4, 3, 16)])
    MatryoshkaLoss(InfoNCELoss(), dims=(4, 8, 16))(q, p, n).backward()
    for x in (q, p, n):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_dim_larger_than_the_embedding_names_dim_size_and_argument():
    loss_fn = MatryoshkaLoss(InfoNCELoss(), dims=(256, 512))
    with pytest.raises(InputError, match=r"dim 512 exceeds the embedding size 384 of argument 'query' \(4, 384\)"):
        loss_fn(torch.randn(4, 384), torch.randn(4, 384))
    with pytest.raises(InputError, match=r"argument 'negatives' \(4, 2, 384\)"):
        loss_fn(torch.randn(4, 512), torch.randn(4, 512), negatives=torch.randn(4, 2, 384))


def test_no_embedding_arguments():
    with pytest.raises(InputError, match="no embeddings"):
        MatryoshkaLoss(DotLoss(), dims=(2,))(torch.randn(4), torch.randn(4))


@pytest.mark.parametrize(("dims", "weights", "field"), [
    ((), None, "dims"),
    ((0, 8), None, "dims"),
    ((-8,), None, "dims"),
    ((8.0,), None, "dims"),
    ((8, 16), (1.0,), "weights"),
    ((8, 16), (1.0, math.nan), "weights"),
])
def test_bad_dims_or_weights(dims, weights, field):
    with pytest.raises(InputError, match=field) as err:
        MatryoshkaLoss(InfoNCELoss(), dims, weights)
    assert err.value.field == field


def test_details_sum_the_losses_and_keep_the_largest_dims_scores():
    """What the trainer reads: the Matryoshka sum, and the per-example scores of the full dim from the
    same pass (dynamic hard-negative mining's S_now); every *_loss term is summed too."""
    from conan_embed.losses import CBBLoss, info_nce_details

    g = torch.Generator().manual_seed(0)
    q, p, n = (torch.randn(*s, generator=g) for s in ((5, 32), (5, 32), (5, 3, 32)))
    out = MatryoshkaLoss(InfoNCELoss(0.05), (8, 32)).details(q, p, n)
    torch.testing.assert_close(out.loss, MatryoshkaLoss(InfoNCELoss(0.05), (8, 32))(q, p, n))
    full = info_nce_details(q, p, n, 0.05)
    torch.testing.assert_close(out.negative_scores, full.negative_scores)
    torch.testing.assert_close(out.positive_scores, full.positive_scores)
    cbb = MatryoshkaLoss(CBBLoss(0.05), (8, 32)).details(q, p, n[None])
    torch.testing.assert_close(cbb.loss, info_nce_details(q[:, :8], p[:, :8], n[:, :, :8], 0.05, False).loss
                               + info_nce_details(q, p, n, 0.05, False).loss)
    a, b, y = torch.randn(6, 32, generator=g), torch.randn(6, 32, generator=g), torch.rand(6, generator=g)
    assert MatryoshkaLoss(CoSENTLoss(), (8, 32)).details(a, b, y).loss.shape == ()  # no details(): LossOutput

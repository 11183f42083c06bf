"""The cross-GPU batch balance loss: a hand-computed case, agreement with InfoNCE, the step composition, errors."""

from __future__ import annotations

import math

import pytest
import torch

from conan_embed.errors import InputError
from conan_embed.losses import CBBLoss, cbb_details, cbb_loss, cbb_step_loss, info_nce


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_by_hand():
    q, p = t([[1.0, 0.0]]), t([[2.0, 0.0]])
    negatives = t([[[[0.0, 3.0]]], [[[-1.0, 0.0]]]])  # rank 0 holds cos 0, rank 1 holds cos -1
    expected = -math.log(math.e / (math.e + 1 + math.exp(-1)))
    assert cbb_loss(q, p, negatives, temperature=1.0).item() == pytest.approx(expected, rel=1e-12)
    out = cbb_details(q, p, negatives, temperature=1.0)
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.positive_scores.tolist() == pytest.approx([1.0]) and out.negative_scores.tolist() == pytest.approx([-0.5])


@pytest.mark.parametrize("in_batch", [True, False])
def test_one_rank_without_sts_is_info_nce(in_batch):
    g = torch.Generator().manual_seed(1)
    q, p, n = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g), torch.randn(6, 3, 16, generator=g)
    torch.testing.assert_close(cbb_loss(q, p, n[None], in_batch=in_batch), info_nce(q, p, n, in_batch=in_batch))


def test_ranks_are_the_negatives_of_every_query_side_by_side():
    """N ranks of K negatives equal one rank of N·K: each query sees all of them."""
    g = torch.Generator().manual_seed(2)
    q, p, n = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(3, 4, 2, 8, generator=g)
    one_rank = n.permute(1, 0, 2, 3).reshape(1, 4, 6, 8)
    for in_batch in (True, False):
        torch.testing.assert_close(cbb_loss(q, p, n, in_batch=in_batch), cbb_loss(q, p, one_rank, in_batch=in_batch))
    torch.testing.assert_close(CBBLoss(temperature=0.1)(q, p, n), cbb_loss(q, p, n, temperature=0.1))


def test_step_composition_by_hand():
    """Retrieval terms r, STS terms s (S batches), β: one process returns Σr + β·Σs/S; with W processes,
    N of them retrieving, each returns (W/N)·Σr + β·(W/S)·Σs."""
    r, s = [t(1.5), t(0.5)], [t(3.0), t(1.0)]
    assert cbb_step_loss(r, s, beta=0.8, sts_batches=2).item() == pytest.approx(2.0 + 0.8 * 2.0)
    assert cbb_step_loss(r, [], beta=0.8, sts_batches=0).item() == pytest.approx(2.0)
    # 4 processes, 3 retrieving: a retrieval rank (r) and the STS rank (its one batch s[0])
    assert cbb_step_loss(r, [], beta=0.8, sts_batches=1, processes=4, retrieval_processes=3).item() == \
        pytest.approx(4 / 3 * 2.0)
    assert cbb_step_loss([], s[:1], beta=0.8, sts_batches=1, processes=4, retrieval_processes=3).item() == \
        pytest.approx(0.8 * 4 * 3.0)
    with pytest.raises(InputError, match="beta must be >= 0"):
        cbb_step_loss(r, s, beta=-1)
    with pytest.raises(InputError, match="sts_batches >= 1"):
        cbb_step_loss(r, s, sts_batches=0)
    with pytest.raises(InputError, match="retrieval_processes must be 1..processes"):
        cbb_step_loss(r, s, processes=2, retrieval_processes=3)


def test_gradients_reach_every_ranks_negatives():
    q, p = torch.randn(2, 4), torch.randn(2, 4)
    n = torch.randn(3, 2, 1, 4, requires_grad=True)
    cbb_loss(q, p, n).backward()
    assert (n.grad.abs().sum(dim=(1, 2, 3)) > 0).all()


def test_bad_inputs_are_named():
    q, p = torch.randn(2, 4), torch.randn(2, 4)
    with pytest.raises(InputError, match=r"negatives must be \[N, B, K, D\]"):
        cbb_loss(q, p, torch.randn(2, 1, 4))
    with pytest.raises(InputError, match="B=2"):
        cbb_loss(q, p, torch.randn(1, 3, 1, 4))
    with pytest.raises(InputError, match="temperature"):
        CBBLoss(temperature=0)

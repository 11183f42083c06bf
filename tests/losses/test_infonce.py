import math

import pytest
import torch
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from conan_embed.errors import InputError
from conan_embed.losses import InfoNCELoss, info_nce, info_nce_details


def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / (math.hypot(*a) * math.hypot(*b))


def expected_loss(queries, candidates_per_query, temperature):
    """Mean over queries of -log softmax of candidate 0 (the positive), in plain math."""
    total = 0.0
    for q, candidates in zip(queries, candidates_per_query):
        logits = [cos(q, c) / temperature for c in candidates]
        total += math.log(sum(math.exp(x) for x in logits)) - logits[0]
    return total / len(queries)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


Q = [[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]]
P = [[2.0, 1.0, 0.0], [0.0, 1.0, 1.0]]
N = [[[0.0, 1.0, 0.0], [1.0, 0.0, 3.0]], [[1.0, 1.0, 1.0], [0.0, -1.0, 0.0]]]


def test_one_negative_by_hand():
    # cos(q, p) = 1, cos(q, n) = 0, τ = 1: -log(e / (e + 1)) = log(1 + 1/e)
    loss = info_nce(t([[1.0, 0.0]]), t([[2.0, 0.0]]), t([[[0.0, 3.0]]]), temperature=1.0, in_batch=False)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1)), rel=1e-12)


def test_in_batch_without_negatives():
    loss = info_nce(t(Q), t(P), temperature=0.5)
    # query i sees both positives; its own comes first
    assert loss.item() == pytest.approx(expected_loss(Q, [[P[0], P[1]], [P[1], P[0]]], 0.5), rel=1e-12)


def test_in_batch_with_negatives_sees_every_negative_in_the_batch():
    loss = info_nce(t(Q), t(P), t(N), temperature=0.5)
    everything_else = [[P[1], *N[0], *N[1]], [P[0], *N[0], *N[1]]]
    candidates = [[P[i], *everything_else[i]] for i in range(2)]
    assert loss.item() == pytest.approx(expected_loss(Q, candidates, 0.5), rel=1e-12)


def test_own_negatives_only():
    loss = info_nce(t(Q), t(P), t(N), temperature=0.5, in_batch=False)
    assert loss.item() == pytest.approx(expected_loss(Q, [[P[0], *N[0]], [P[1], *N[1]]], 0.5), rel=1e-12)


def test_details_report_detached_per_example_cosines():
    q, p, n = t(Q).requires_grad_(), t(P), t(N)
    out = info_nce_details(q, p, n, temperature=0.5)
    assert out.loss.item() == pytest.approx(info_nce(q, p, n, temperature=0.5).item(), rel=1e-12)
    assert out.positive_scores.tolist() == pytest.approx([cos(Q[i], P[i]) for i in range(2)], rel=1e-6)
    assert out.negative_scores.tolist() == pytest.approx(
        [(cos(Q[i], N[i][0]) + cos(Q[i], N[i][1])) / 2 for i in range(2)], rel=1e-6)
    assert not out.positive_scores.requires_grad and not out.negative_scores.requires_grad
    assert info_nce_details(q, p).negative_scores is None


def test_module_wraps_the_function():
    loss_fn = InfoNCELoss(temperature=0.1, in_batch=False)
    assert (loss_fn.temperature, loss_fn.in_batch) == (0.1, False)
    assert loss_fn(t(Q), t(P), t(N)).item() == info_nce(t(Q), t(P), t(N), 0.1, in_batch=False).item()
    assert loss_fn.details(t(Q), t(P), t(N)).loss.item() == loss_fn(t(Q), t(P), t(N)).item()


@pytest.mark.parametrize("negatives", [0, 1, 3])
def test_equals_multiple_negatives_ranking_loss_on_embeddings(negatives):
    g = torch.Generator().manual_seed(negatives)
    q, p, n = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g), torch.randn(5, negatives, 16, generator=g)
    # ST 6 exposes the embedding-level computation; the model is not touched there
    mnrl = MultipleNegativesRankingLoss(model=None, scale=1 / 0.05)
    theirs = mnrl.compute_loss_from_embeddings([q, p, *n.unbind(1)], None)
    ours = info_nce(q, p, n if negatives else None, temperature=0.05)
    torch.testing.assert_close(ours, theirs)


def test_equals_multiple_negatives_ranking_loss_end_to_end(tiny_model, features):
    feats, embs = features
    mnrl = MultipleNegativesRankingLoss(tiny_model, scale=50.0)
    theirs = mnrl([dict(feats[c]) for c in ("anchor", "positive", "negative")], None)
    ours = info_nce(embs["anchor"], embs["positive"], embs["negative"][:, None], temperature=0.02)
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_batch", [True, False])
def test_gradients_flow(in_batch):
    q, p, n = (torch.randn(*s, requires_grad=True) for s in [(4, 8), (4, 8), (4, 3, 8)])
    info_nce(q, p, n, in_batch=in_batch).backward()
    for x in (q, p, n):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_bf16_inputs_give_a_float32_loss_close_to_float32():
    q, p, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 3, 8)
    low = info_nce(q.bfloat16(), p.bfloat16(), n.bfloat16(), temperature=0.02)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, info_nce(q, p, n, temperature=0.02), rtol=0.05, atol=0.05)


@pytest.mark.parametrize(("kwargs", "field", "shape"), [
    ({"query": torch.randn(4)}, "query", "(4,)"),
    ({"positive": torch.randn(4, 16)}, "positive", "(4, 16)"),
    ({"positive": torch.randint(0, 2, (4, 32))}, "positive", "(4, 32)"),
    ({"negatives": torch.randn(3, 2, 32)}, "negatives", "(3, 2, 32)"),
    ({"negatives": torch.randn(4, 2, 16)}, "negatives", "(4, 2, 16)"),
    ({"negatives": torch.randn(4, 32)}, "negatives", "(4, 32)"),
    ({"negatives": torch.randn(4, 0, 32)}, "negatives", "(4, 0, 32)"),
])
def test_bad_shapes_name_the_argument_and_shapes(kwargs, field, shape):
    args = {"query": torch.randn(4, 32), "positive": torch.randn(4, 32), "negatives": None} | kwargs
    with pytest.raises(InputError, match=field) as err:
        info_nce(**args)
    assert err.value.field == field and shape in str(err.value)


def test_negatives_message_states_the_expected_shape():
    with pytest.raises(InputError, match=r"negatives must be \[B, K, D\] with B=4, K>=1 and D=32 .*got \(3, 2, 32\)"):
        info_nce(torch.randn(4, 32), torch.randn(4, 32), torch.randn(3, 2, 32))


def test_own_negatives_mode_needs_negatives():
    with pytest.raises(InputError, match="in_batch=False needs negatives"):
        info_nce(torch.randn(4, 8), torch.randn(4, 8), in_batch=False)


@pytest.mark.parametrize("temperature", [0, -0.05, math.nan, math.inf, "0.05", None])
def test_bad_temperature(temperature):
    with pytest.raises(InputError, match="temperature"):
        InfoNCELoss(temperature=temperature)
    with pytest.raises(InputError, match="temperature"):
        info_nce(torch.randn(2, 4), torch.randn(2, 4), temperature=temperature)


def test_rows_gathered_from_processes_give_the_one_process_loss():
    """Two processes with one query each, rows padded to 2 (garbage in the padding, masked by `valid`):
    each process's loss over every process's candidates, averaged, is the whole batch's loss by hand."""
    garbage = [5.0, -3.0, 2.0]
    p = t([P[0], garbage, P[1], garbage])
    n = t([N[0], [garbage, garbage], N[1], [garbage, garbage]])
    valid = torch.tensor([True, False, True, False])
    losses = [info_nce_details(t([Q[k]]), p, n, temperature=0.5, offset=2 * k, valid=valid).loss for k in range(2)]
    everything_else = [[P[1], *N[0], *N[1]], [P[0], *N[0], *N[1]]]
    expected = expected_loss(Q, [[P[i], *everything_else[i]] for i in range(2)], 0.5)
    assert (sum(losses) / 2).item() == pytest.approx(expected, rel=1e-12)
    # own negatives only: the query's row is found at its offset
    own = info_nce_details(t([Q[1]]), p, n, temperature=0.5, in_batch=False, offset=2, valid=valid)
    assert own.loss.item() == pytest.approx(expected_loss([Q[1]], [[P[1], *N[1]]], 0.5), rel=1e-12)
    assert own.negative_scores.item() == pytest.approx((cos(Q[1], N[1][0]) + cos(Q[1], N[1][1])) / 2, rel=1e-6)
    with pytest.raises(InputError, match="R >= offset"):
        info_nce_details(t([Q[1]]), p, n, offset=4)

import math

import pytest
import torch
from sentence_transformers.sentence_transformer.losses import CoSENTLoss as STCoSENTLoss

from conan_embed.errors import InputError
from conan_embed.losses import CoSENTLoss, cosent


def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / (math.hypot(*a) * math.hypot(*b))


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


A = [[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]
B = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.5]]


@pytest.mark.parametrize(("labels", "expected"), [
    ([1.0, 0.0], math.log1p(math.exp(-1))),  # right order: cos 1 above cos 0
    ([0.0, 1.0], math.log1p(math.exp(1))),  # wrong order
    ([0.5, 0.5], 0.0),  # a tie ranks nothing
])
def test_two_pairs_by_hand(labels, expected):
    # cos(pair 0) = 1, cos(pair 1) = 0, scale 1
    loss = cosent(t([[1.0, 0.0], [1.0, 0.0]]), t([[2.0, 0.0], [0.0, 3.0]]), labels, scale=1.0)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_three_pairs_with_a_tie_by_hand():
    labels, scale = [3.0, 1.0, 1.0], 2.0
    c = [cos(a, b) for a, b in zip(A, B)]
    # only (0, 1) and (0, 2) are ordered; the tie (1, 2) contributes nothing
    expected = math.log(1 + math.exp(scale * (c[1] - c[0])) + math.exp(scale * (c[2] - c[0])))
    assert cosent(t(A), t(B), labels, scale=scale).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("labels", [
    torch.tensor([0.9, 0.1, 0.5, 0.5, 0.3, 0.9, 0.0, 1.0]),
    torch.tensor([5, 0, 3, 3, 1, 2, 2, 4]),
    torch.tensor([True, False, True, False, False, True, True, False]),
    torch.tensor([[0.2], [0.4], [0.1], [0.8], [0.6], [0.5], [0.3], [0.7]]),
])
def test_equals_sentence_transformers_cosent(labels):
    g = torch.Generator().manual_seed(0)
    e1, e2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    # ST 6 exposes the embedding-level computation; the model is not touched there
    theirs = STCoSENTLoss(model=None, scale=20.0).compute_loss_from_embeddings([e1, e2], labels)
    torch.testing.assert_close(cosent(e1, e2, labels), theirs)
    torch.testing.assert_close(CoSENTLoss()(e1, e2, labels), theirs)


def test_module_wraps_the_function():
    loss_fn = CoSENTLoss(scale=5.0)
    assert loss_fn.scale == 5.0
    assert loss_fn(t(A), t(B), [2.0, 1.0, 0.0]).item() == cosent(t(A), t(B), [2.0, 1.0, 0.0], 5.0).item()


def test_gradients_flow():
    e1, e2 = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    cosent(e1, e2, torch.rand(6)).backward()
    for x in (e1, e2):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize(("args", "field", "shape"), [
    ((torch.randn(4), torch.randn(4), torch.rand(4)), "emb1", "(4,)"),
    ((torch.randn(4, 8), torch.randn(4, 6), torch.rand(4)), "emb2", "(4, 6)"),
    ((torch.randn(4, 8), torch.randn(3, 8), torch.rand(4)), "emb2", "(3, 8)"),
    ((torch.randn(4, 8), torch.randn(4, 8), torch.rand(3)), "labels", "(3,)"),
    ((torch.randn(4, 8), torch.randn(4, 8), torch.rand(4, 2)), "labels", "(4, 2)"),
])
def test_bad_shapes_name_the_argument_and_shapes(args, field, shape):
    with pytest.raises(InputError, match=field) as err:
        cosent(*args)
    assert err.value.field == field and shape in str(err.value)


def test_non_numeric_labels():
    with pytest.raises(InputError, match="labels"):
        cosent(torch.randn(2, 4), torch.randn(2, 4), ["high", "low"])


@pytest.mark.parametrize("scale", [0, -20.0, math.nan, math.inf, None])
def test_bad_scale(scale):
    with pytest.raises(InputError, match="scale"):
        CoSENTLoss(scale=scale)
    with pytest.raises(InputError, match="scale"):
        cosent(torch.randn(2, 4), torch.randn(2, 4), [1.0, 0.0], scale=scale)

import numpy as np
import pytest
import torch

from conan_embed.errors import InputError
from conan_embed.model_loading import load_embedder
from conan_embed.modeling import (
    PAPER_MATRYOSHKA_DIMS,
    build_embedder,
    check_truncate_dim,
    matryoshka_dims,
    save_embedder,
)
from conan_embed.testing import tiny_bert


def test_matryoshka_dims():
    assert matryoshka_dims(1792) == PAPER_MATRYOSHKA_DIMS == (256, 512, 768, 1024, 1280, 1536, 1792)
    assert matryoshka_dims(384) == (256, 384)
    assert matryoshka_dims(64, dims=(16, 32, 128)) == (16, 32, 64)
    with pytest.raises(InputError, match="matryoshka_dims"):
        matryoshka_dims(64, dims=(0, 32))


def test_paper_head_cls_pooling_linear_1792(tmp_path):
    base = tiny_bert(tmp_path / "bert", ["保险人寿"])
    model = build_embedder(base)  # the paper's defaults: CLS pooling, Dense(h -> 1792), no activation
    assert model.get_embedding_dimension() == 1792
    assert model[1].pooling_mode == "cls"
    dense = model[2]
    assert isinstance(dense.activation_function, torch.nn.Identity) and dense.linear.bias is not None
    texts = ["保险", "人寿保险"]
    with torch.no_grad():
        tokens = model[0].auto_model(**model.tokenizer(texts, return_tensors="pt", padding=True))
        cls = tokens.last_hidden_state[:, 0]
        expected = dense.linear(cls).numpy()
    np.testing.assert_allclose(model.encode(texts), expected, atol=1e-5)
    # the head is seeded: building twice gives the same untrained model
    np.testing.assert_array_equal(build_embedder(base).encode(texts), model.encode(texts))

    path = save_embedder(model, tmp_path / "model")
    from sentence_transformers import SentenceTransformer

    plain = SentenceTransformer(str(path), truncate_dim=256)
    np.testing.assert_allclose(plain.encode(texts), expected[:, :256], atol=1e-5)
    assert load_embedder(path).conan_matryoshka_dims == PAPER_MATRYOSHKA_DIMS


def test_no_head_and_bad_arguments(tmp_path):
    base = tiny_bert(tmp_path / "bert")
    assert build_embedder(base, pooling="mean", out_dim=None).get_embedding_dimension() == 32
    with pytest.raises(InputError, match="pooling"):
        build_embedder(base, pooling="max")
    with pytest.raises(InputError, match="out_dim"):
        build_embedder(base, out_dim=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        build_embedder(tmp_path / "empty")
    with pytest.raises(InputError, match="between 1 and the model's output size 32, got 33"):
        check_truncate_dim(33, 32)
    with pytest.raises(InputError, match="positive integer"):
        check_truncate_dim(2.5, 32)

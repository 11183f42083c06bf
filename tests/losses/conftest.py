"""A tiny random SentenceTransformer (built once per session, no download) to compare against
sentence-transformers' own losses end to end."""

from __future__ import annotations

import pytest

TEXTS = {
    "anchor": ["汽车保险怎么理赔", "人寿保险是什么", "健康保险费用", "房屋保险覆盖什么"],
    "positive": ["理赔需要提供什么", "人寿保险的政策", "健康保险的价格", "房屋保险可以覆盖"],
    "negative": ["快递书的质量", "年金退休公司", "残疾保险好差", "价格快递如何"],
}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from conan_embed.modeling import build_embedder
    from conan_embed.testing import tiny_bert

    path = tiny_bert(tmp_path_factory.mktemp("losses") / "bert", [t for col in TEXTS.values() for t in col])
    model = build_embedder(path, pooling="mean", out_dim=None, max_seq_length=64)
    return model.eval()  # dropout off: ST's forward and ours must see the same embeddings


@pytest.fixture(scope="session")
def features(tiny_model):
    """(per-column feature dicts as the ST trainer passes them, per-column embeddings)."""
    import torch

    feats = {col: tiny_model.preprocess(texts) for col, texts in TEXTS.items()}
    with torch.no_grad():
        embs = {col: tiny_model(dict(f))["sentence_embedding"] for col, f in feats.items()}
    return feats, embs

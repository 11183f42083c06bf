import json

import numpy as np
import pytest

import conan_embed.assets as assets
from conan_embed.assets.e5s1 import write_e5s1
from conan_embed.errors import AssetError, InputError


@pytest.fixture
def synthetic_assets(tmp_path, monkeypatch, synthetic):
    """Point the shipped-asset paths at a small synthetic model and a temporary cache."""
    model, tokenizer = synthetic
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    e5s1 = write_e5s1(tmp_path / "e5.bin", model)
    tok = tmp_path / "tokenizer.json"
    tok.write_text(json.dumps(tokenizer))
    monkeypatch.setattr(assets, "e5s1_file", lambda: e5s1)
    monkeypatch.setattr(assets, "e5_tokenizer_file", lambda: tok)
    return tmp_path


def test_prepare_is_idempotent_and_loads_as_plain_sentence_transformer(synthetic_assets):
    path = assets.prepare_model("e5-small-full")
    assert path == synthetic_assets / "cache" / "models" / "e5-small-full"
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert assets.prepare_model("e5-small-full") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path))
    assert model.prompts["query"] == "query: " and model.prompts["document"] == "passage: "
    emb = model.encode(["保险人寿", "ab 19"], normalize_embeddings=True)
    assert emb.shape == (2, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert SentenceTransformer(str(path), truncate_dim=16).encode(["保险"]).shape == (1, 16)


def test_interrupted_prepare_leaves_nothing_half_written(synthetic_assets, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(assets, "save_embedder", crash)
    with pytest.raises(KeyboardInterrupt):
        assets.prepare_model("e5-small-full")
    models = synthetic_assets / "cache" / "models"
    assert list(models.iterdir()) == []  # the temporary folder went with the crash
    monkeypatch.undo()
    monkeypatch.setenv(assets.CACHE_ENV, str(synthetic_assets / "cache"))
    assert not assets.is_ready(models / "e5-small-full")


def test_stale_or_partial_cache_is_rebuilt(synthetic_assets):
    target = synthetic_assets / "cache" / "models" / "e5-small-full"
    target.mkdir(parents=True)
    (target / "junk").write_text("from an older version")
    path = assets.prepare_model("e5-small-full")
    assert assets.is_ready(path) and not (path / "junk").exists()


def test_unknown_model_asset_is_a_clear_error(synthetic_assets):
    with pytest.raises(InputError, match="unknown model asset"):
        assets.prepare_model("e5-large")


def test_corrupt_model_file_is_a_clear_error(synthetic_assets, monkeypatch):
    bad = synthetic_assets / "bad.bin"
    bad.write_bytes(b"E5S1" + bytes(10))
    monkeypatch.setattr(assets, "e5s1_file", lambda: bad)
    with pytest.raises(AssetError, match="bad.bin"):
        assets.prepare_model("e5-small-full")

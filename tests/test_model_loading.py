"""A model reference resolves in one place, once: shipped names, folders, hub ids; the fingerprint
ignores a checkpoint's training state and is computed once per source."""

from __future__ import annotations

import hashlib

import pytest

import conan_embed.model_loading as loading
from conan_embed.errors import InputError
from conan_embed.model_loading import ModelSource, resolve_model


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text('{"hidden_size": 8}')
    (path / "model.safetensors").write_bytes(b"weights")
    return path


def test_references_resolve_to_a_source(folder, tmp_path, monkeypatch):
    prepared = []
    monkeypatch.setattr(loading, "prepare_model", lambda name: prepared.append(name) or folder)
    assert resolve_model("e5-small") == ModelSource(folder) and prepared == ["e5-small"]
    assert resolve_model(folder) == ModelSource(folder) and resolve_model(str(folder)).is_local
    source = ModelSource(folder)
    assert resolve_model(source) is source  # resolved once: passing it on resolves nothing again
    hub = resolve_model("BAAI/bge-large-zh-v1.5")  # a hub id, for users online
    assert hub.location == "BAAI/bge-large-zh-v1.5" and not hub.is_local
    assert hub.fingerprint == hashlib.sha256(b"BAAI/bge-large-zh-v1.5").hexdigest()


def test_bad_references_name_the_path(tmp_path):
    with pytest.raises(InputError, match="does not exist") as err:
        resolve_model(str(tmp_path / "nope"))
    assert "nope" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a model folder"):
        resolve_model(tmp_path / "empty")


def test_fingerprint_follows_the_weights_not_the_training_state(folder, monkeypatch):
    before = ModelSource(folder).fingerprint
    (folder / "optimizer.pt").write_bytes(b"state")  # a checkpoint's optimizer: not the model
    (folder / "rng_state_0.pth").write_bytes(b"rng")
    assert ModelSource(folder).fingerprint == before
    (folder / "model.safetensors").write_bytes(b"other weights")
    assert ModelSource(folder).fingerprint != before

    calls = []
    monkeypatch.setattr(loading, "model_fingerprint", lambda path: calls.append(path) or "digest")
    source = ModelSource(folder)
    assert source.fingerprint == source.fingerprint == "digest" and len(calls) == 1  # hashed once

"""The GPU serving path on a CPU: shape buckets (filler rows and tokens change no vector) and a
torch.compile'd forward pass, through the server, equal in-process encode."""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import pytest

from conan_embed.serving import ServeSettings
from conan_embed.serving.engine import EmbeddingEngine
from conan_embed.serving.local import BackgroundServer

from .conftest import TEXTS


def test_bucketed_passes_give_the_same_vectors(tiny_model):
    from conan_embed.serving.dynamic_batching import PendingText, bucket_shape

    plain, bucketed = (EmbeddingEngine(tiny_model, device="cpu", pass_overhead_tokens=8, shape_buckets=b)
                       for b in (False, True))
    for engine in (plain, bucketed):
        engine.load()
    batch = [PendingText(ids, "", None) for ids in plain._tokenize(TEXTS[:3], "query: ", True)]
    longest = max(len(p.ids) for p in batch)
    assert bucket_shape(3, longest, 24) > (3, longest)  # a filler row, filler tokens
    np.testing.assert_allclose(bucketed._infer(batch), plain._infer(batch), atol=1e-6)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_compiled_server_equals_encode(tiny_model, device):
    """On a CPU: inductor with bucketed shapes. On a GPU (where one is present; CI has none): CUDA graphs."""
    import torch
    from sentence_transformers import SentenceTransformer

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no GPU")
    if device == "cpu" and shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on a CPU needs a C++ compiler")
    torch._dynamo.reset()
    engine = EmbeddingEngine(tiny_model, device=device, compile=True, shape_buckets=True if device == "cpu" else None)
    with BackgroundServer(ServeSettings(model=tiny_model), engine=engine) as s:
        r = httpx.post(s.url + "/v1/embeddings", json={"input": TEXTS, "input_type": "query"}, timeout=60)
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]])
    want = SentenceTransformer(tiny_model, device="cpu").encode(TEXTS, prompt_name="query", normalize_embeddings=True)
    np.testing.assert_allclose(got, want, atol=1e-5 if device == "cpu" else 1e-4)
    assert engine.shape_buckets and engine._cuda_graphs == (device == "cuda")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the compiled forward ran


def test_compile_is_for_the_torch_backend(tiny_model):
    with pytest.raises(ValueError, match="torch backend"):
        EmbeddingEngine(tiny_model, backend="onnx", compile=True)

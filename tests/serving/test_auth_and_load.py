"""API keys, 503 while loading, 429 when the queue is full, and a failing batch that fails only itself."""

from __future__ import annotations

import asyncio
import threading

import httpx
import numpy as np
import pytest

from conan_embed.serving import ServeSettings
from conan_embed.serving.engine import EmbeddingEngine
from conan_embed.serving.local import BackgroundServer


def test_api_key(tiny_model, monkeypatch):
    openai = pytest.importorskip("openai")
    with BackgroundServer(ServeSettings(model=tiny_model, api_key="s3cret", device="cpu")) as s:
        ok = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        assert len(ok.embeddings.create(model="m", input="保险").data[0].embedding) == 48
        bad = openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.embeddings.create(model="m", input="保险")
        r = httpx.post(s.url + "/v1/embeddings", json={"input": "保险"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(s.url + "/v1/models").status_code == 401
        assert httpx.get(s.url + "/health").status_code == 200  # probes need no key


class GatedEngine(EmbeddingEngine):
    """Loads only when `load_gate` opens; each forward pass waits for `infer_gate` (tests drive time)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.load_gate, self.infer_gate = threading.Event(), threading.Event()
        self.infer_gate.set()
        self.fail_on: str | None = None

    def load(self):
        self.load_gate.wait(60)
        super().load()

    def _launch(self, batch):
        self.infer_gate.wait(60)
        if self.fail_on is not None and any(len(p.ids) == len(self.fail_on) for p in batch):
            raise RuntimeError("simulated failure")
        return super()._launch(batch)


def test_503_while_loading_then_serves(tiny_model):
    engine = GatedEngine(tiny_model, device="cpu")
    with BackgroundServer(ServeSettings(model=tiny_model), engine=engine, wait_ready=False) as s:
        r = httpx.post(s.url + "/v1/embeddings", json={"input": "保险"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading" and r.headers["retry-after"]
        assert httpx.get(s.url + "/health").json()["status"] == "loading"
        openai = pytest.importorskip("openai")
        with pytest.raises(openai.InternalServerError) as err:
            openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0).embeddings.create(model="m", input="保险")
        assert err.value.status_code == 503
        engine.load_gate.set()
        for _ in range(400):
            if httpx.get(s.url + "/health").json()["status"] == "ok":
                break
            threading.Event().wait(0.05)
        assert httpx.post(s.url + "/v1/embeddings", json={"input": "保险"}).status_code == 200


def test_queue_full_is_429_and_nothing_is_lost(tiny_model):
    engine = GatedEngine(tiny_model, device="cpu", max_queue=4, max_wait_ms=0)
    engine.load_gate.set()
    with BackgroundServer(ServeSettings(model=tiny_model), engine=engine) as s:
        engine.infer_gate.clear()  # forward passes block: the queue fills up

        async def burst():
            async with httpx.AsyncClient(timeout=60) as c:
                tasks = [asyncio.create_task(c.post(s.url + "/v1/embeddings", json={"input": ["保险", "理赔"]}))
                         for _ in range(8)]
                await asyncio.sleep(1.0)
                engine.infer_gate.set()
                return await asyncio.gather(*tasks)

        responses = asyncio.run(burst())
        codes = sorted(r.status_code for r in responses)
        assert set(codes) == {200, 429} and codes.count(429) >= 4, codes
        for r in responses:
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "queue_full"
            else:
                assert len(r.json()["data"]) == 2
        metrics = httpx.get(s.url + "/metrics").text
        assert 'conan_embed_failures_total{code="queue_full"}' in metrics
        # the openai client sees a 429 as RateLimitError
        openai = pytest.importorskip("openai")
        engine.infer_gate.clear()
        # one request held in a blocked forward pass, one filling the queue behind it
        blockers = [threading.Thread(target=lambda: httpx.post(s.url + "/v1/embeddings", json={"input": ["保险"] * 4},
                                                               timeout=60)) for _ in range(2)]
        for b in blockers:
            b.start()
            threading.Event().wait(0.5)
        with pytest.raises(openai.RateLimitError) as err:
            openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0).embeddings.create(model="m", input="保险")
        assert err.value.response.headers["retry-after"] == "1"
        engine.infer_gate.set()
        for b in blockers:
            b.join(30)


def test_a_failing_batch_fails_only_its_request(tiny_model):
    engine = GatedEngine(tiny_model, device="cpu", max_wait_ms=0)
    engine.load_gate.set()
    with BackgroundServer(ServeSettings(model=tiny_model), engine=engine) as s:
        poison = "毒" * 13
        engine.fail_on = "x" * len(engine.model.tokenizer(poison)["input_ids"])
        bad = httpx.post(s.url + "/v1/embeddings", json={"input": poison})
        assert bad.status_code == 500 and bad.json()["error"]["code"] == "inference_failed"
        good = httpx.post(s.url + "/v1/embeddings", json={"input": "保险"})
        assert good.status_code == 200 and np.isclose(np.linalg.norm(good.json()["data"][0]["embedding"]), 1)


def test_pooling_that_leaves_the_prompt_out(tiny_model, tmp_path):
    """Instructor-style models pool without the prompt tokens: the server must do as encode does."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_model, device="cpu")
    model.set_pooling_include_prompt(False)
    model.save(str(tmp_path / "m"))
    texts = ["人寿保险的受益人需要缴税吗？", "保险"]
    with BackgroundServer(ServeSettings(model=str(tmp_path / "m"), device="cpu")) as s:
        r = httpx.post(s.url + "/v1/embeddings", json={"input": texts, "input_type": "query"}).json()
    got = np.array([d["embedding"] for d in r["data"]])
    want = SentenceTransformer(str(tmp_path / "m"), device="cpu").encode(texts, prompt_name="query",
                                                                        normalize_embeddings=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    plain = SentenceTransformer(tiny_model, device="cpu").encode(texts, prompt_name="query", normalize_embeddings=True)
    assert not np.allclose(want, plain, atol=1e-3)  # the setting matters for this model

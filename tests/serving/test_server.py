"""The service through the official `openai` client and raw HTTP: the contract, the vectors, the errors."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from .conftest import TEXTS


def reference(model_path, texts, dim=None, prompt_name=None):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, truncate_dim=dim, device="cpu")
    return model.encode(texts, normalize_embeddings=True, prompt_name=prompt_name, convert_to_numpy=True)


def test_embeddings_equal_in_process_encode(client, server, tiny_model):
    for dim in (16, 32, None):
        kwargs = {"dimensions": dim} if dim else {}
        got = client.embeddings.create(model="anything", input=TEXTS, encoding_format="float", **kwargs)
        emb = np.array([d.embedding for d in got.data], dtype=np.float32)
        assert emb.shape == (len(TEXTS), dim or 48) and [d.index for d in got.data] == list(range(len(TEXTS)))
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
        expected = reference(tiny_model, TEXTS, dim)
        np.testing.assert_allclose(emb, expected, atol=server.atol)
        assert (emb * expected).sum(axis=1).min() > 0.999
    assert got.model == "tiny" and got.object == "list"


def test_input_type_selects_the_prompt(client, server, tiny_model):
    got = client.embeddings.create(model="tiny", input=TEXTS[:2], dimensions=32, encoding_format="float",
                                   extra_body={"input_type": "query"})
    emb = np.array([d.embedding for d in got.data])
    np.testing.assert_allclose(emb, reference(tiny_model, TEXTS[:2], 32, "query"), atol=server.atol)
    plain = client.embeddings.create(model="tiny", input=TEXTS[:2], dimensions=32, encoding_format="float")
    assert not np.allclose(np.array([d.embedding for d in plain.data]), emb, atol=1e-3)


def test_base64_round_trip_and_token_counts(client, server):
    # the openai client asks for base64 by default and decodes it; check the wire format by hand too
    got = client.embeddings.create(model="tiny", input=TEXTS, dimensions=16)
    floats = client.embeddings.create(model="tiny", input=TEXTS, dimensions=16, encoding_format="float")
    np.testing.assert_allclose(np.array([d.embedding for d in got.data]),
                               np.array([d.embedding for d in floats.data]), atol=server.batch_atol)
    raw = httpx.post(server.url + "/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "base64",
                                                          "dimensions": 16}).json()
    vec = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vec, floats.data[0].embedding, atol=server.batch_atol)
    tok = server.engine.model.tokenizer
    expected = sum(len(tok(t, truncation=True, max_length=24)["input_ids"]) for t in TEXTS)
    assert got.usage.prompt_tokens == got.usage.total_tokens == expected


def test_token_id_input(client, server):
    ids = server.engine.model.tokenizer(TEXTS[2], add_special_tokens=False)["input_ids"]
    by_ids = client.embeddings.create(model="tiny", input=[ids], encoding_format="float")
    by_text = client.embeddings.create(model="tiny", input=[TEXTS[2]], encoding_format="float")
    np.testing.assert_allclose(by_ids.data[0].embedding, by_text.data[0].embedding, atol=server.batch_atol)


def test_long_texts_are_truncated_or_rejected(client, server):
    long = "保险" * 200
    got = client.embeddings.create(model="tiny", input=[long], encoding_format="float")
    assert got.usage.total_tokens == 24
    r = httpx.post(server.url + "/v1/embeddings", json={"input": [TEXTS[0], long], "truncate": False})
    assert r.status_code == 400 and r.json()["error"]["code"] == "input_too_long" and "input[1]" in r.text


@pytest.mark.parametrize("body, param", [
    ({"input": ""}, "input"), ({"input": []}, "input"), ({"input": [""]}, "input"), ({}, "input"),
    ({"input": 42}, "input"), ({"input": ["ok", 3.5]}, "input"), ({"input": [[1, 2], "x", {"a": 1}]}, "input"),
    ({"input": "好", "dimensions": 20}, "dimensions"), ({"input": "好", "dimensions": "16"}, "dimensions"),
    ({"input": "好", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "好", "input_type": "code"}, "input_type"), ({"input": "好", "truncate": "no"}, "truncate"),
    ({"input": ["好"] * 65}, "input"), ({"input": [[10 ** 9]]}, "input"),
])
def test_bad_input_is_a_400_in_openai_shape(server, body, param):
    r = httpx.post(server.url + "/v1/embeddings", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param and err["message"]


def test_not_json_and_unknown_route(server):
    r = httpx.post(server.url + "/v1/embeddings", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_oversized_body_is_413(server):
    big = {"input": ["保险" * 2000] * 10}
    r = httpx.post(server.url + "/v1/embeddings", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit applies while the body streams in
        yield b'{"input": ["'
        for _ in range(100):
            yield ("保险" * 500).encode()
        yield b'"]}'
    r = httpx.post(server.url + "/v1/embeddings", content=chunks())
    assert r.status_code == 413


def test_models_health_metrics(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["dimensions"] == [16, 32, 48] and health["pass_overhead_tokens"] >= 8
    text = httpx.get(server.url + "/metrics").text
    for name in ("conan_embed_requests_total", "conan_embed_queue_texts", "conan_embed_batch_texts_bucket",
                 "conan_embed_tokens_total", 'conan_embed_stage_seconds_bucket{le="0.001",stage="inference"}',
                 'stage="tokenize"', 'stage="queue"', 'stage="request"', "conan_embed_failures_total"):
        assert name in text, name


def test_the_openai_client_raises_its_own_errors(client):
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="tiny", input="保险", dimensions=20)
    assert err.value.status_code == 400 and "Matryoshka" in err.value.message and err.value.param == "dimensions"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="tiny", input=[""])
    with pytest.raises(openai.APIStatusError) as err:
        client.embeddings.create(model="tiny", input=["保险" * 3000] * 10)
    assert err.value.status_code == 413

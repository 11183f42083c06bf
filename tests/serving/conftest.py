"""A tiny Matryoshka model folder (48-d head, dims 16/32/48, e5-style prompts, with its fp32 and int8
ONNX exports) and a running server on each backend: every contract test runs against all three."""

from __future__ import annotations

import pytest

TEXTS = ["人寿保险的受益人需要缴税吗？", "房主保险理赔如何工作", "什么是定期寿险", "保险", "汽车保险包括哪些费用和理赔流程"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from conan_embed.modeling import build_embedder, save_embedder
    from conan_embed.testing import tiny_bert

    root = tmp_path_factory.mktemp("serve-model")
    base = tiny_bert(root / "bert", TEXTS + ["query: passage: "], hidden=32, layers=1, max_positions=64)
    model = build_embedder(base, pooling="mean", out_dim=48, max_seq_length=24, dims=(16, 32, 48),
                           prompts={"query": "query: ", "passage": "passage: "})
    folder = save_embedder(model, root / "model")
    from conan_embed.onnx_export import export_onnx

    export_onnx(model, folder)
    export_onnx(model, folder, quantize="int8", arch="avx2")
    return str(folder)


# backend, ONNX file, how close to in-process torch encode the vectors must be (int8 rounds the weights),
# and how close one text's vector is across batches (int8 quantises activations per batch)
BACKENDS = {"torch": ("torch", None, 1e-5, 1e-6), "onnx": ("onnx", None, 1e-5, 1e-5),
            "onnx-int8": ("onnx", "onnx/model_qint8_avx2.onnx", 2e-2, 2e-2)}


@pytest.fixture(scope="module", params=list(BACKENDS))
def server(tiny_model, request):
    from conan_embed.serving import ServeSettings
    from conan_embed.serving.local import BackgroundServer

    backend, file, atol, batch_atol = BACKENDS[request.param]
    with BackgroundServer(ServeSettings(model=tiny_model, model_id="tiny", max_inputs=64, max_body_bytes=64 * 1024,
                                        device="cpu", backend=backend, onnx_file=file)) as s:
        s.atol, s.batch_atol = atol, batch_atol
        yield s


@pytest.fixture
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)

"""The OpenAI-compatible embedding service (FastAPI): `POST /v1/embeddings`, `GET /v1/models`,
`GET /health`, `GET /metrics`. docs/serving.md describes the API, the flags and the errors.

Every error is answered in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 400 bad
input, 401 missing or wrong API key, 404 unknown route, 413 body too large, 429 queue full (with
Retry-After), 503 while the model loads, 500 if a forward pass fails (that request only).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request  # module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

try:  # 5-10x faster than json for the float arrays of a response, and it takes numpy rows as they are
    import orjson
except ImportError:  # pragma: no cover - orjson comes with the serve extra
    orjson = None

from conan_embed.serving.dynamic_batching import QueueFull
from conan_embed.serving.engine import EmbeddingEngine, TooLong, finish_embeddings
from conan_embed.serving.metrics import ServerMetrics

INPUT_TYPES = ("query", "passage", "document", "none")


@dataclass
class ServeSettings:
    model: str
    model_id: str | None = None  # the name /v1/models and responses report (default: the model's folder name)
    api_key: str | None = None
    max_inputs: int = 2048  # texts per request (OpenAI's limit)
    max_body_bytes: int = 8 * 2**20
    max_queue: int = 1024  # texts waiting for a forward pass, over all requests
    max_batch_tokens: int = 8192  # padded tokens per forward pass
    max_wait_ms: float = 2.0  # how long a forward pass waits for more texts to join it
    truncate: bool = True  # default for texts over the model's length limit (a request may override)
    device: str | None = None
    precision: str = "fp32"
    tokenizer_threads: int = 1
    gil_switch_s: float = 0.0005  # sys.setswitchinterval while serving (see lifespan)
    pass_overhead_tokens: int | None = None  # a forward pass's fixed cost in tokens (None: measured at load)
    backend: str = "torch"  # or "onnx": the folder's ONNX export (conan_embed.onnx_runtime)
    onnx_file: str | None = None  # which export (default onnx/model.onnx)
    compile: bool = False  # torch.compile the forward pass (CUDA graphs over bucketed shapes on a GPU)
    max_in_flight: int = 2  # forward passes launched and not yet collected (1: no overlap)


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse a request body over `limit` bytes, from Content-Length or while it
    streams in (a chunked body is never read whole)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(send, _too_large(self.limit))
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except BodyTooLarge:
            await _send_error(send, _too_large(self.limit))


def _too_large(limit: int) -> APIError:
    return APIError(413, f"request body over {limit:,} bytes", code="request_too_large")


async def _send_error(send, error: APIError) -> None:
    payload = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _is_token_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(x, int) and not isinstance(x, bool)
                                                           for x in value)


def parse_request(body, engine: EmbeddingEngine, settings: ServeSettings) -> dict:
    """The embeddings request, checked; raises APIError(400) naming the offending param."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    raw = body.get("input")
    if raw is None:
        raise APIError(400, "'input' is required: a string or an array of strings", param="input")
    if isinstance(raw, str):
        texts = [raw]
    elif _is_token_ids(raw):
        texts = [_decode_ids(raw, engine, 0)]
    elif isinstance(raw, list):
        texts = []
        for i, item in enumerate(raw):
            if isinstance(item, str):
                texts.append(item)
            elif _is_token_ids(item):
                texts.append(_decode_ids(item, engine, i))
            else:
                raise APIError(400, f"input[{i}] must be a string or an array of token ids, got "
                                    f"{type(item).__name__}", param="input")
    else:
        raise APIError(400, f"'input' must be a string or an array, got {type(raw).__name__}", param="input")
    if not texts:
        raise APIError(400, "'input' is an empty array", param="input")
    for i, t in enumerate(texts):
        if not t.strip():
            raise APIError(400, f"input[{i}] is empty", param="input")
    if len(texts) > settings.max_inputs:
        raise APIError(400, f"{len(texts)} inputs, more than the limit of {settings.max_inputs} per request",
                       param="input")
    dim = body.get("dimensions")
    if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim not in engine.dims):
        raise APIError(400, f"'dimensions' must be one of the model's Matryoshka dims {list(engine.dims)}, "
                            f"got {dim!r}", param="dimensions")
    fmt = body.get("encoding_format", "float") or "float"
    if fmt not in ("float", "base64"):
        raise APIError(400, f"'encoding_format' must be 'float' or 'base64', got {fmt!r}", param="encoding_format")
    input_type = body.get("input_type")
    if input_type is not None and input_type not in INPUT_TYPES:
        raise APIError(400, f"'input_type' must be one of {list(INPUT_TYPES)}, got {input_type!r}",
                       param="input_type")
    truncate = body.get("truncate", settings.truncate)
    if not isinstance(truncate, bool):
        raise APIError(400, f"'truncate' must be true or false, got {truncate!r}", param="truncate")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, f"'model' must be a string, got {type(model).__name__}", param="model")
    return {"texts": texts, "dimensions": dim, "encoding_format": fmt, "input_type": input_type,
            "truncate": truncate}


def _decode_ids(ids: list[int], engine: EmbeddingEngine, index: int) -> str:
    """Token ids (of this model's tokenizer) back to text, which then takes the normal path."""
    vocab = engine.model.tokenizer.vocab_size if engine.ready else 0
    bad = next((x for x in ids if not 0 <= x < max(vocab, len(engine.model.tokenizer))), None)
    if bad is not None:
        raise APIError(400, f"input[{index}] holds token id {bad}, outside the model's vocabulary", param="input")
    return engine.model.tokenizer.decode(ids, skip_special_tokens=True)


def encode_vector(vector: np.ndarray, fmt: str):
    if fmt == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector if orjson is not None else vector.tolist()


def dump_json(payload: dict) -> bytes:
    if orjson is not None:
        return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(payload, separators=(",", ":")).encode()


def load_json(body: bytes):
    return orjson.loads(body) if orjson is not None else json.loads(body)


def build_engine(settings: ServeSettings) -> EmbeddingEngine:
    return EmbeddingEngine(settings.model, device=settings.device, precision=settings.precision,
                           max_batch_tokens=settings.max_batch_tokens, max_queue=settings.max_queue,
                           max_wait_ms=settings.max_wait_ms, tokenizer_threads=settings.tokenizer_threads,
                           pass_overhead_tokens=settings.pass_overhead_tokens,
                           backend=settings.backend, onnx_file=settings.onnx_file, compile=settings.compile,
                           max_in_flight=settings.max_in_flight)


def check_auth(request: Request, api_key: str | None) -> None:
    """401 unless the request carries `Authorization: Bearer <api_key>` (no key set: every request passes)."""
    if not api_key:
        return
    header = request.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), api_key.encode()):
        raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                       type_="authentication_error", code="invalid_api_key")


async def embed_or_api_error(engine: EmbeddingEngine, req: dict):
    """The engine's embeddings and token counts; its failures as the API's 4xx / 5xx errors."""
    try:
        return await engine.embed(req["texts"], input_type=req["input_type"], truncate=req["truncate"])
    except TooLong as exc:
        raise APIError(400, str(exc), param="input", code="input_too_long") from exc
    except QueueFull as exc:
        raise APIError(429, f"the server is at capacity ({exc}); retry shortly", type_="rate_limit_error",
                       code="queue_full", headers={"Retry-After": "1"}) from exc
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise APIError(500, f"embedding failed: {type(exc).__name__}: {exc}", type_="server_error",
                       code="inference_failed") from exc


def add_error_handlers(app, settings: ServeSettings, metrics: ServerMetrics) -> None:
    """Every error answers with the OpenAI-style JSON body and is counted."""

    def error_response(err: APIError, endpoint: str) -> JSONResponse:
        metrics.failures.labels(err.code or err.type).inc()
        metrics.requests.labels(endpoint, str(err.status)).inc()
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, err: APIError):
        return error_response(err, request.url.path)

    @app.exception_handler(BodyTooLarge)
    async def on_body_too_large(request: Request, exc: BodyTooLarge):
        return error_response(_too_large(settings.max_body_bytes), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(APIError(exc.status_code, str(exc.detail), code=code), request.url.path)


def create_app(settings: ServeSettings, engine: EmbeddingEngine | None = None, *, load: bool = True):
    """The ASGI app. The model loads in a background thread at startup: until it is ready,
    `/v1/embeddings` answers 503 and `/health` says "loading"."""
    engine = engine or build_engine(settings)
    metrics = engine.metrics
    model_id = settings.model_id or str(settings.model).rstrip("/").split("/")[-1]
    state = {"error": None, "started": int(time.time())}

    def load_model():
        try:
            engine.load()
        except Exception as exc:  # reported by /health and every request
            state["error"] = f"{type(exc).__name__}: {exc}"

    async def lifespan(app):
        # The inference thread needs the GIL for every kernel launch; with the default 5 ms switch
        # interval it waits behind the event loop's HTTP and JSON work (measured on a GPU: 55 ms per
        # forward pass of 16 texts that take a few ms in-process). A shorter interval hands it over sooner.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, settings.gil_switch_s))
        engine.batcher.start()
        if load and not engine.ready:
            threading.Thread(target=load_model, name="conan-embed-load", daemon=True).start()
        yield
        await engine.batcher.stop()
        sys.setswitchinterval(switch)

    app = FastAPI(title="conan-embed", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine, app.state.settings = engine, settings
    add_error_handlers(app, settings, metrics)

    def check_ready() -> None:
        if state["error"]:
            raise APIError(503, f"the model failed to load: {state['error']}", type_="server_error",
                           code="model_load_failed")
        if not engine.ready:
            raise APIError(503, "the model is loading; retry shortly", type_="server_error", code="model_loading",
                           headers={"Retry-After": "2"})

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        t0 = time.perf_counter()
        check_auth(request, settings.api_key)
        check_ready()
        try:
            body = load_json(await request.body())
        except ValueError as exc:  # json.JSONDecodeError, orjson.JSONDecodeError, UnicodeDecodeError
            raise APIError(400, f"the request body is not valid JSON ({exc})") from exc
        req = parse_request(body, engine, settings)
        emb, tokens = await embed_or_api_error(engine, req)
        vectors = finish_embeddings(emb, req["dimensions"])
        data = [{"object": "embedding", "index": i, "embedding": encode_vector(v, req["encoding_format"])}
                for i, v in enumerate(vectors)]
        total = int(sum(tokens))
        metrics.tokens.inc(total)
        metrics.texts.inc(len(tokens))
        metrics.requests.labels("/v1/embeddings", "200").inc()
        metrics.stage_seconds.labels("request").observe(time.perf_counter() - t0)
        payload = {"object": "list", "data": data, "model": model_id,
                   "usage": {"prompt_tokens": total, "total_tokens": total}}
        return Response(dump_json(payload), media_type="application/json")

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request, settings.api_key)
        metrics.requests.labels("/v1/models", "200").inc()
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": state["started"],
                                            "owned_by": "conan-embed"}]}

    @app.get("/health")
    async def health():
        if state["error"]:
            return JSONResponse({"status": "failed", "error": state["error"]}, status_code=503)
        if not engine.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok", "model": model_id, "dimensions": list(engine.dims), "max_length": engine.max_length,
                "queue": engine.batcher.queued, "pass_overhead_tokens": engine.batcher.pass_overhead_tokens}

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        metrics.queue_size.set(engine.batcher.queued)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return BodyLimit(app, settings.max_body_bytes)

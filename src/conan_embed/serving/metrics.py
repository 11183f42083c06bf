"""Prometheus metrics of the server (`GET /metrics`), in a registry of their own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("conan_embed_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.failures = Counter("conan_embed_failures", "Requests answered with an error, by error code",
                                ["code"], registry=r)
        self.queue_size = Gauge("conan_embed_queue_texts", "Texts waiting for a forward pass", registry=r)
        self.batch_size = Histogram("conan_embed_batch_texts", "Texts per forward pass", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.batch_tokens = Histogram("conan_embed_batch_padded_tokens", "Padded tokens per forward pass",
                                      registry=r, buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768))
        self.tokens = Counter("conan_embed_tokens", "Tokens embedded (after truncation)", registry=r)
        self.texts = Counter("conan_embed_texts", "Texts embedded", registry=r)
        self.stage_seconds = Histogram("conan_embed_stage_seconds", "Latency per stage: tokenize, queue (wait "
                                       "for a forward pass), inference (one forward pass), request (whole)",
                                       ["stage"], registry=r, buckets=_SECONDS)

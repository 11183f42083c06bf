"""The embedding engine behind the server: a sentence-transformers model, tokenisation off the event
loop, the dynamic batcher, and a forward pass that is launched in one thread and collected in another.

Texts take the same path as `SentenceTransformer.encode`: `model.preprocess(texts, prompt=...)`
(the model's own tokenizer, prompt handling and length cap), the model's forward pass, then the
Matryoshka cut and L2 normalisation; only the batching differs (texts of many requests share a padded
batch), so the vectors equal in-process `encode` up to float rounding (tested within 1e-5).

`compile=True` runs the forward pass through `torch.compile` (one compile with dynamic shapes, at
load); on a GPU in "reduce-overhead" mode, which replays CUDA graphs, with each pass's shape rounded up
to a bucket (`batching.bucket_shape`) so that few graphs are recorded. A forward pass of an eager
model costs tens of milliseconds of host Python on a GPU; a graph replay costs one launch.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np

from conan_embed.modeling import text_prompt
from conan_embed.serving.dynamic_batching import DynamicBatcher, PendingText, bucket_shape
from conan_embed.serving.metrics import ServerMetrics


class TooLong(ValueError):
    """A text exceeds the model's length limit and the request asked not to truncate."""

    def __init__(self, index: int, tokens: int, limit: int):
        super().__init__(f"input[{index}] has {tokens} tokens, over the model's limit of {limit} "
                         f"(send truncate: true, or shorten it)")
        self.index = index


class EmbeddingEngine:
    def __init__(self, model_path: str, *, device: str | None = None, precision: str = "fp32",
                 max_batch_tokens: int = 8192, max_queue: int = 1024, max_wait_ms: float = 2.0,
                 tokenizer_threads: int = 1, pass_overhead_tokens: int | None = None,
                 metrics: ServerMetrics | None = None, backend: str = "torch", onnx_file: str | None = None,
                 compile: bool = False, shape_buckets: bool | None = None, max_in_flight: int = 2):
        if compile and backend != "torch":
            raise ValueError(f"compile applies to the torch backend, not {backend!r}")
        self.model_path, self.device, self.precision = model_path, device, precision
        self.backend, self.onnx_file, self.compile = backend, onnx_file, compile
        self.shape_buckets = shape_buckets  # None: on when compiled for CUDA graphs
        self.metrics = metrics or ServerMetrics()
        self.model = None
        self._forward = None
        self._cuda_graphs = False
        self.dims: tuple[int, ...] = ()
        self.batcher = DynamicBatcher(self._launch, collect=self._collect, max_batch_tokens=max_batch_tokens,
                                      max_queue=max_queue, max_wait_s=max_wait_ms / 1000,
                                      on_batch=self._observe_batch, max_in_flight=max_in_flight,
                                      pass_overhead_tokens=pass_overhead_tokens)  # None: measured at load
        # one thread by default: a Rust tokenizer shared by threads can fail with "Already borrowed" when
        # calls set its truncation/padding concurrently (huggingface/tokenizers#537)
        self._tokenizers = ThreadPoolExecutor(tokenizer_threads, thread_name_prefix="conan-embed-tok")
        self._prompt_lengths: dict[str, int] = {}  # for poolings that leave the prompt out

    # -- loading -------------------------------------------------------------------------------------
    def load(self) -> None:
        """Blocking: load the model (the server answers 503 until this returns)."""
        from conan_embed.model_loading import load_embedder

        model = load_embedder(self.model_path, device=self.device, backend=self.backend, onnx_file=self.onnx_file,
                              padding_free=False)  # batches are padded to buckets here
        model.eval()
        full = model.get_embedding_dimension()
        self.dims = tuple(sorted({d for d in getattr(model, "conan_matryoshka_dims", ()) if d <= full} | {full}))
        self._forward = model.forward
        if self.compile:
            import torch

            self._cuda_graphs = model.device.type == "cuda"
            self._forward = torch.compile(model.forward, dynamic=True,
                                          mode="reduce-overhead" if self._cuda_graphs else None)
        if self.shape_buckets is None:
            self.shape_buckets = self._cuda_graphs
        self.model = model
        if self.batcher.pass_overhead_tokens is None or self.compile:
            # in the inference thread: a compiled model compiles, and records its CUDA graphs, on its first
            # passes there (the calibration's 1 x 8 and 8 x 64 passes), before the server says it is ready
            overhead = self.batcher.run_in_inference_thread(self._measure_pass_overhead)
            if self.batcher.pass_overhead_tokens is None:
                self.batcher.pass_overhead_tokens = overhead

    def _measure_pass_overhead(self, repeats: int = 3) -> int:
        """The fixed cost of one forward pass in tokens of compute: time a 1 x 8 and an 8 x 64 pass,
        fit time = overhead + tokens x per_token, return overhead / per_token (clamped to [8, 65536])."""
        import statistics

        pad = self.model.tokenizer.pad_token_id or 0
        ids = [max(pad + 1, 5)] * 64

        def timed(n: int, length: int) -> float:
            batch = [PendingText(np.array(ids[:length]), "", None) for _ in range(n)]
            runs = []
            for _ in range(repeats + 1):
                t0 = time.perf_counter()
                self._infer(batch)
                runs.append(time.perf_counter() - t0)
            return statistics.median(runs[1:])  # the first run warms up

        small, big = timed(1, 8), timed(8, 64)
        per_token = max((big - small) / (8 * 64 - 8), 1e-9)
        return int(min(max((small - 8 * per_token) / per_token, 8), 65536))

    @property
    def ready(self) -> bool:  # loaded and calibrated: requests never race the calibration passes
        return self.model is not None and self.batcher.pass_overhead_tokens is not None

    @property
    def max_length(self) -> int:
        return int(self.model.max_seq_length)

    def prompt(self, input_type: str | None) -> str | None:
        """The prompt text for an input type: 'query', 'passage' (`modeling.text_prompt`: the model's
        document prompt, else its passage prompt, as in training), 'none', or None = what `encode` does
        by default (the model's default prompt)."""
        prompts = self.model.prompts or {}
        if input_type is None:
            name = self.model.default_prompt_name
            return prompts.get(name) if name else None
        if input_type == "none":
            return None
        return text_prompt(prompts, input_type)

    # -- per request ------------------------------------------------------------------------------------
    def _tokenize(self, texts: list[str], prompt: str | None, truncate: bool) -> list[np.ndarray]:
        features = self.model.preprocess(texts, prompt=prompt)
        if "prompt_length" in features:
            length = features["prompt_length"]
            self._prompt_lengths[prompt or ""] = int(length[0] if hasattr(length, "__len__") else length)
        ids, mask = features["input_ids"].numpy(), features["attention_mask"].numpy().astype(bool)
        rows = [ids[i][mask[i]] for i in range(len(texts))]
        if not truncate:
            limit = self.max_length
            for i, row in enumerate(rows):
                if len(row) >= limit:  # at the cap: check the untruncated length
                    full = len(self.model.tokenizer((prompt or "") + texts[i], truncation=False)["input_ids"])
                    if full > limit:
                        raise TooLong(i, full, limit)
        return rows

    async def embed(self, texts: list[str], *, input_type: str | None = None,
                    truncate: bool = True) -> tuple[np.ndarray, list[int]]:
        """Full-size float32 embeddings (not normalised) and the token count of each text."""
        loop = asyncio.get_running_loop()
        prompt = self.prompt(input_type)
        self.batcher.check_room(len(texts))  # a request bound for 429 shouldn't wait for the tokenizer first
        t0 = time.perf_counter()
        ids = await loop.run_in_executor(self._tokenizers, self._tokenize, texts, prompt, truncate)
        self.metrics.stage_seconds.labels("tokenize").observe(time.perf_counter() - t0)
        futures = self.batcher.submit(ids, prompt or "")
        self.metrics.queue_size.set(self.batcher.queued)
        try:
            rows = await asyncio.gather(*futures)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        return np.stack(rows), [len(x) for x in ids]

    # -- per batch: launched in the inference thread, collected in the collector thread ----------------
    def _launch(self, batch: list[PendingText]):
        """Pad the batch (to its bucket when shapes are bucketed), run the forward pass and start copying
        its output to the host; on a GPU this returns while the device still works."""
        import torch

        model = self.model
        rows, longest = len(batch), max(p.tokens for p in batch)
        shape = bucket_shape(rows, longest, self.max_length) if self.shape_buckets else (rows, longest)
        pad = model.tokenizer.pad_token_id or 0
        input_ids = np.full(shape, pad, dtype=np.int64)
        mask = np.zeros(shape, dtype=np.int64)
        mask[rows:, 0] = 1  # filler rows attend to one token: no all-masked row (NaN in some kernels)
        for i, p in enumerate(batch):
            input_ids[i, : p.tokens] = p.ids
            mask[i, : p.tokens] = 1
        features = {"input_ids": torch.from_numpy(input_ids).to(model.device),
                    "attention_mask": torch.from_numpy(mask).to(model.device)}
        if batch[0].group in self._prompt_lengths:  # a sub-batch never mixes prompts
            features["prompt_length"] = self._prompt_lengths[batch[0].group]
        bf16 = self.precision == "bf16"
        autocast = torch.autocast(device_type=model.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
        if self._cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new pass: the previous one's outputs may go
        with torch.inference_mode(), autocast:
            out = self._forward(features)["sentence_embedding"][:rows].float()
        if out.device.type != "cuda":
            return out.numpy(), None
        host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        host.copy_(out, non_blocking=True)  # queued before the next pass can overwrite a graph's output
        done = torch.cuda.Event()
        done.record()
        return host.numpy(), done

    @staticmethod
    def _collect(launched) -> np.ndarray:
        rows, done = launched
        if done is not None:
            done.synchronize()  # releases the GIL while the device finishes
        return rows

    def _infer(self, batch: list[PendingText]) -> np.ndarray:
        return self._collect(self._launch(batch))

    def _observe_batch(self, batch: list[PendingText], started: float, ended: float) -> None:
        m = self.metrics
        m.batch_size.observe(len(batch))
        m.batch_tokens.observe(len(batch) * max(p.tokens for p in batch))
        m.stage_seconds.labels("inference").observe(ended - started)
        for p in batch:
            m.stage_seconds.labels("queue").observe(started - p.enqueued)
        m.queue_size.set(self.batcher.queued)


def finish_embeddings(emb: np.ndarray, dim: int | None) -> np.ndarray:
    """Matryoshka: keep the first `dim` values, then renormalise to unit length."""
    if dim is not None:
        emb = emb[:, :dim]
    return (emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)).astype(np.float32)

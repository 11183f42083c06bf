"""Dynamic batching: texts from many requests share forward passes, grouped by a token budget.

Pure scheduling logic (no model, no web framework) so that it can be tested directly:

* `plan_batches` sorts pending texts by (prompt group, length) and cuts them into sub-batches whose
  *padded* size (longest x count) stays within the token budget, and starts a new one where padding
  would cost more than another forward pass (the engine measures that cost when it loads): on a CPU
  similar lengths share a batch (80 -> 44 padded tokens per text on a query/passage mix), on a GPU,
  where a pass's fixed cost dominates, batches stay large (docs/benchmarks.md);
* `DynamicBatcher` holds a bounded queue (backpressure: a request that doesn't fit is refused at
  once, never parked), wakes on new work, waits a few milliseconds for more to arrive, takes the
  oldest texts first (FIFO between requests: a long request can't starve a short one forever), and
  runs each sub-batch in one inference thread so the event loop keeps answering. With a `collect`
  step the forward pass is a pipeline, as in infinity's batch handler: the inference thread launches
  pass N+1 while a second thread waits for pass N's output and hands it back, so the device does not
  idle while Python collects (at most `max_in_flight` passes hold device memory). A failed batch
  fails only its own texts' futures; a cancelled request's texts are skipped;
* `bucket_shape` rounds a pass's shape up to a few fixed sizes, so that a compiled forward pass
  (CUDA graphs) records one graph per bucket instead of one per shape.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


class QueueFull(Exception):
    """The bounded queue has no room for a request's texts: answer 429 with Retry-After."""


@dataclass
class PendingText:
    ids: np.ndarray  # the token ids (special tokens included, truncated), unpadded
    group: str  # texts of different groups (prompts) never share a forward pass
    future: asyncio.Future = field(repr=False)
    enqueued: float = 0.0

    @property
    def tokens(self) -> int:
        return len(self.ids)


def plan_batches(lengths: list[int], groups: list[str], max_batch_tokens: int,
                 pass_overhead_tokens: int = 16) -> list[list[int]]:
    """Indexes cut into sub-batches: sorted by (group, length); a batch ends when its padded size would
    pass the budget, or when adding the next text would pad the texts already in it by more tokens than
    a forward pass of its own costs (`pass_overhead_tokens`: the fixed cost of a pass, in tokens of
    compute; small on a CPU, thousands on a GPU, where launches dominate). A text longer than the
    budget gets a batch of its own.

    >>> plan_batches([5, 100, 6, 98, 7], ["q"] * 5, 300)
    [[0, 2, 4], [3, 1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (groups[i], lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current:
            longest, n = lengths[current[-1]], len(current)
            if (groups[i] != groups[current[0]] or lengths[i] * (n + 1) > max_batch_tokens
                    or n * (lengths[i] - longest) > pass_overhead_tokens):
                batches.append(current)
                current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


LENGTH_BUCKETS = (16, 32, 64, 96, 128, 192, 256, 384, 512)  # at most 1.5x padding above 32 tokens


def bucket_shape(rows: int, length: int, max_length: int) -> tuple[int, int]:
    """A forward pass's (rows, length) rounded up to a bucket: rows to the next power of two, length to
    the next of LENGTH_BUCKETS (then multiples of 256), never past `max_length` (the model's limit,
    which the texts already respect).

    >>> bucket_shape(5, 70, 512), bucket_shape(1, 20, 24), bucket_shape(3, 600, 1024)
    ((8, 96), (1, 24), (4, 768))
    """
    padded_rows = 1 << max(rows - 1, 0).bit_length()
    padded = next((b for b in LENGTH_BUCKETS if b >= length), -(-length // 256) * 256)
    return padded_rows, max(min(padded, max_length), length)


class DynamicBatcher:
    """Collects `PendingText`s, runs `infer(list[PendingText])` on sub-batches in one worker thread, and
    resolves each text's future with its row of the (n, d) result. With `collect`, `infer` only launches
    the pass and returns a handle; `collect(handle) -> (n, d) array` runs in a second thread, overlapped
    with the next launch."""

    def __init__(self, infer: Callable[[list[PendingText]], np.ndarray], *, max_batch_tokens: int = 8192,
                 max_queue: int = 1024, max_wait_s: float = 0.002, on_batch: Callable | None = None,
                 pass_overhead_tokens: int | None = 16, collect: Callable | None = None, max_in_flight: int = 2):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be 1 or more, got {max_in_flight}")
        self.infer, self.collect, self.max_batch_tokens, self.max_queue = infer, collect, max_batch_tokens, max_queue
        self.pass_overhead_tokens = pass_overhead_tokens
        self.max_wait_s, self.on_batch, self.max_in_flight = max_wait_s, on_batch, max_in_flight
        self.pending: deque[PendingText] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._in_flight: asyncio.Semaphore | None = None
        self._collecting: set[asyncio.Task] = set()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="conan-embed-infer")
        self._collector = ThreadPoolExecutor(1, thread_name_prefix="conan-embed-collect")

    def run_in_inference_thread(self, fn: Callable, *args):
        """Blocking: run `fn` where the forward passes run (a compiled model's CUDA graphs belong to
        the thread that recorded them)."""
        return self._pool.submit(fn, *args).result()

    @property
    def queued(self) -> int:
        return len(self.pending)

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._in_flight = asyncio.Semaphore(self.max_in_flight)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        for task in [self._task, *self._collecting]:
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._collector.shutdown(wait=False, cancel_futures=True)

    def check_room(self, texts: int) -> None:
        """Refuse early (before tokenising) when a request's texts can't fit right now."""
        if len(self.pending) + texts > self.max_queue:
            raise QueueFull(f"{len(self.pending)} texts queued, room for {self.max_queue - len(self.pending)}")

    def submit(self, ids: list[np.ndarray], group: str) -> list[asyncio.Future]:
        """Queue one request's texts (all or none); raises QueueFull when they don't fit."""
        self.check_room(len(ids))
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        items = [PendingText(x, group, loop.create_future(), now) for x in ids]
        self.pending.extend(items)
        self._wake.set()
        return [item.future for item in items]

    def _take(self) -> list[PendingText]:
        """The oldest pending texts, up to one budget of real (unpadded) tokens."""
        taken, tokens = [], 0
        while self.pending:
            item = self.pending[0]
            if item.future.done():  # the request was cancelled (client gone)
                self.pending.popleft()
                continue
            if taken and tokens + item.tokens > self.max_batch_tokens:
                break
            taken.append(self.pending.popleft())
            tokens += item.tokens
        return taken

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if sum(p.tokens for p in self.pending) < self.max_batch_tokens and self.max_wait_s > 0:
                await asyncio.sleep(self.max_wait_s)  # let concurrent requests join this batch
            while self.pending:
                taken = self._take()
                if not taken:
                    break
                plan = plan_batches([t.tokens for t in taken], [t.group for t in taken], self.max_batch_tokens,
                                    self.pass_overhead_tokens)
                for idx in plan:
                    batch = [taken[i] for i in idx if not taken[i].future.done()]
                    if not batch:
                        continue
                    await self._in_flight.acquire()
                    started = time.perf_counter()
                    try:
                        handle = await loop.run_in_executor(self._pool, self.infer, batch)
                    except Exception as exc:  # only this batch's texts fail
                        self._finish(batch, exc, started)
                        continue
                    if self.collect is None:
                        self._finish(batch, handle, started)
                    else:  # collected in the other thread while the next pass launches
                        task = loop.create_task(self._collect(batch, handle, started))
                        self._collecting.add(task)
                        task.add_done_callback(self._collecting.discard)

    async def _collect(self, batch: list[PendingText], handle, started: float) -> None:
        try:
            rows = await asyncio.get_running_loop().run_in_executor(self._collector, self.collect, handle)
        except Exception as exc:
            rows = exc
        self._finish(batch, rows, started)

    def _finish(self, batch: list[PendingText], rows, started: float) -> None:
        """Hand each text its row (or the batch's exception) and free the pass's slot."""
        self._in_flight.release()
        for i, item in enumerate(batch):
            if not item.future.done():
                if isinstance(rows, Exception):
                    item.future.set_exception(rows)
                else:
                    item.future.set_result(rows[i])
        if self.on_batch is not None and not isinstance(rows, Exception):
            self.on_batch(batch, started, time.perf_counter())

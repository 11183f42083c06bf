"""The batcher's scheduling, without a model."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from conan_embed.serving.dynamic_batching import DynamicBatcher, QueueFull, plan_batches


def test_plan_batches_respects_the_padded_budget_and_groups():
    lengths = [3, 50, 4, 48, 5, 7, 60, 2]
    groups = ["q", "q", "p", "q", "p", "q", "q", "p"]
    batches = plan_batches(lengths, groups, 100)
    assert sorted(i for b in batches for i in b) == list(range(8))
    for b in batches:
        assert len({groups[i] for i in b}) == 1
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 100
    assert plan_batches([500], ["q"], 100) == [[0]]  # longer than the budget: alone


def test_padding_is_weighed_against_the_cost_of_another_pass():
    lengths = [13, 13, 14, 80, 81, 120, 200, 10, 12]
    # a CPU-like pass cost (16 tokens): short and long texts go to separate passes
    assert plan_batches(lengths, ["q"] * 9, 8192, 16) == [[7, 8, 0, 1, 2], [3, 4], [5], [6]]
    # a GPU-like pass cost (thousands of tokens): one pass, padding is cheaper than launches
    assert plan_batches(lengths, ["q"] * 9, 8192, 4096) == [[7, 8, 0, 1, 2, 3, 4, 5, 6]]


def test_batcher_merges_concurrent_requests_and_keeps_order():
    seen = []

    def infer(batch):
        seen.append(len(batch))
        return np.stack([np.full(4, p.ids.sum(), dtype=np.float32) for p in batch])

    async def main():
        b = DynamicBatcher(infer, max_batch_tokens=1000, max_queue=100, max_wait_s=0.01)
        b.start()
        reqs = [b.submit([np.array([i, k]) for k in range(3)], "g") for i in range(5)]
        out = [await asyncio.gather(*r) for r in reqs]
        await b.stop()
        return out

    out = asyncio.run(main())
    for i, rows in enumerate(out):
        assert [r[0] for r in rows] == [i + k for k in range(3)]
    assert max(seen) == 15  # all five requests in one forward pass


def test_queue_bound_and_failure_isolation():
    def infer(batch):
        if any(p.ids[0] == 666 for p in batch):
            raise ValueError("bad batch")
        return np.zeros((len(batch), 2), dtype=np.float32)

    async def main():
        b = DynamicBatcher(infer, max_batch_tokens=2, max_queue=3, max_wait_s=0)
        b.start()
        with pytest.raises(QueueFull):
            b.submit([np.array([1])] * 4, "g")
        bad = b.submit([np.array([666, 1])], "g")
        good = b.submit([np.array([1, 2])], "g")
        with pytest.raises(ValueError):
            await bad[0]
        assert (await good[0]).shape == (2,)
        await b.stop()

    asyncio.run(main())


def test_bucket_shape_bounds_the_number_of_shapes():
    from conan_embed.serving.dynamic_batching import bucket_shape

    assert bucket_shape(1, 9, 512) == (1, 16)
    assert bucket_shape(3, 16, 512) == (4, 16)
    assert bucket_shape(17, 100, 512) == (32, 128)
    assert bucket_shape(2, 500, 512) == (2, 512)
    assert bucket_shape(2, 20, 24) == (2, 24)  # never past the model's limit
    shapes = {bucket_shape(n, length, 512) for n in range(1, 257) for length in range(1, 513)}
    assert len(shapes) == 9 * 9  # 9 row buckets (1 ... 256) x 9 length buckets
    for n, length in [(5, 33), (64, 511), (1, 1)]:
        rows, padded = bucket_shape(n, length, 512)
        assert rows >= n and padded >= length


def test_collect_overlaps_the_next_launch_and_fails_alone():
    """Pass 0's output is collected only after pass 1 was launched: a batcher that waited for each
    collect before the next launch would time out here."""
    events, launched_second = [], threading.Event()

    def launch(batch):
        first = int(batch[0].ids[0])
        events.append(("launch", first))
        if first == 1:
            launched_second.set()
        return batch

    def collect(batch):
        first = int(batch[0].ids[0])
        if first == 0:
            assert launched_second.wait(5), "the next pass was not launched while this one was collected"
        if first == 666:
            raise ValueError("bad output")
        events.append(("collect", first))
        return np.stack([np.full(2, p.ids[0], dtype=np.float32) for p in batch])

    async def main():
        b = DynamicBatcher(launch, collect=collect, max_batch_tokens=100, max_queue=10, max_wait_s=0.01)
        b.start()
        first, second = b.submit([np.array([0, 0])], "a"), b.submit([np.array([1, 1])], "b")  # two passes
        rows = [await first[0], await second[0]]
        bad, good = b.submit([np.array([666])], "c"), b.submit([np.array([2])], "d")
        with pytest.raises(ValueError, match="bad output"):
            await bad[0]
        rows.append(await good[0])
        await b.stop()
        return rows

    rows = asyncio.run(main())
    assert [r[0] for r in rows] == [0, 1, 2]
    assert events[:4] == [("launch", 0), ("launch", 1), ("collect", 0), ("collect", 1)]

"""The batcher's scheduling, without a model."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from conan_embed.serving.batching import DynamicBatcher, QueueFull, plan_batches


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

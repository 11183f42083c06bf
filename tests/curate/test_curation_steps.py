"""The curation step protocol: the partitioned dedup edges, the runner's markers, `map_with`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conan_embed.curate import minhash
from conan_embed.curate.curate_config import DedupConfig
from conan_embed.curate.curation_steps import GlobalStep, ShardStep, CurationRunner, WorkArea
from conan_embed.curate.dedup import DedupStage
from conan_embed.curate.dedup_steps import DedupBands, DedupEdges, DedupExact, DedupSignatures
from conan_embed.curate.executors import LocalExecutor
from conan_embed.curate.io import Shard

FIELDS = {"query": "query", "passage": "passage"}


def signature_work(folder, sizes: list[int], seed: int = 0):
    """Shards of the given sizes whose signature files (DedupSignatures') hold few distinct values, so
    buckets are large and cross shards and bands, and hashes with planted exact duplicates. Returns the
    work area, the dedup stage and, over all rows, (gid, hash, sig)."""
    rng = np.random.default_rng(seed)
    dedup = DedupStage(DedupConfig(num_perm=12, bands=6, rows=2), FIELDS)
    shards, start = [], 0
    for k, n in enumerate(sizes):
        shards.append(Shard(index=k, path="in.jsonl", start=0, stop=n, gid_start=start))
        start += n + 3  # gids need not be contiguous (rows the filters dropped)
    work = WorkArea(folder, shards, ".jsonl")
    work.folder(DedupSignatures.name).mkdir(parents=True)
    all_gid, all_hash, all_sig = [], [], []
    for shard, n in zip(shards, sizes):
        gid = np.arange(shard.gid_start, shard.gid_start + n, dtype=np.int64)
        hashes = rng.integers(0, 4 * max(sum(sizes), 1), n).astype(np.uint64)  # some hashes repeat: exact duplicates
        sig = rng.integers(0, 3, (n, 12)).astype(np.uint32)
        np.save(work.folder(DedupSignatures.name) / f"{shard.name}.sig.npy", sig)
        np.savez(work.folder(DedupSignatures.name) / f"{shard.name}.npz", gid=gid, hash=hashes)
        all_gid.append(gid), all_hash.append(hashes), all_sig.append(sig)
    return work, dedup, np.concatenate(all_gid), np.concatenate(all_hash), np.concatenate(all_sig)


def partitioned_edges(work: WorkArea, dedup: DedupStage, executor, partitions: int) -> np.ndarray:
    """Exact duplicates, band keys by partition and bucket edges per partition, through `executor`;
    the union of the partitions' edges."""
    CurationRunner(work, executor, {"dedup": 0.0}).run(
        [DedupExact(work, dedup), DedupBands(work, dedup, partitions), DedupEdges(work, partitions)])
    found = [np.load(work.folder(DedupEdges.name) / f"p{j:05d}.npy") for j in range(partitions)]
    return minhash.unique_edges(np.concatenate(found))


def direct_edges(dedup: DedupStage, gid: np.ndarray, hashes: np.ndarray, sig: np.ndarray) -> np.ndarray:
    """The independent path: exact duplicates by a set, then `minhash.candidate_edges` over all rows left."""
    seen, keep = set(), np.zeros(len(gid), dtype=bool)
    for k, h in enumerate(hashes.tolist()):
        keep[k] = h not in seen
        seen.add(h)
    return minhash.candidate_edges(dedup.detector.band_keys(sig[keep]), gid[keep])


@pytest.mark.parametrize("sizes, partitions", [([40, 0, 25, 60, 1], 5), ([130], 2), ([7, 9], 3), ([0, 0], 2)])
def test_partitioned_candidate_edges_equal_the_direct_ones(tmp_path, sizes, partitions):
    work, dedup, gid, hashes, sig = signature_work(tmp_path, sizes)
    got = partitioned_edges(work, dedup, LocalExecutor(workers=1, show_progress=False), partitions)
    expected = direct_edges(dedup, gid, hashes, sig)
    assert got.dtype == np.int64 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    dropped = json.loads(work.summary(DedupExact.name).read_text())["removed"]
    if sum(sizes) > 100:
        assert len(expected) > 100 and dropped > 5  # buckets and exact duplicates really were there
        assert not np.isin(got, np.load(work.folder(DedupExact.name) / "removed.npz")["gid"]).any()
    if not sum(sizes):
        assert got.shape == (0, 2) and dropped == 0


def test_partitions_in_forked_workers_give_the_same_edges(tmp_path):
    work, dedup, gid, hashes, sig = signature_work(tmp_path, [50, 30, 45])
    got = partitioned_edges(work, dedup, LocalExecutor(workers=2, show_progress=False), 4)
    np.testing.assert_array_equal(got, direct_edges(dedup, gid, hashes, sig))


class CountingStep(ShardStep):
    name = "count"
    calls: list = []

    def run(self, shard):
        CountingStep.calls.append(shard.name)
        if shard.index == 1 and len(CountingStep.calls) < 3:
            raise RuntimeError("simulated crash")
        return {"rows": shard.stop}


class SummingStep(GlobalStep):
    name = "sum"
    calls = 0

    def run(self):
        SummingStep.calls += 1
        return {"rows": sum(self.work.done("count", s.name)["rows"] for s in self.work.shards)}


def test_the_runner_redoes_only_unfinished_items(tmp_path):
    shards = [Shard(index=k, path="in.jsonl", start=0, stop=10 + k, gid_start=20 * k) for k in range(3)]
    work = WorkArea(tmp_path, shards, ".jsonl")
    steps = [CountingStep(work), SummingStep(work)]
    CountingStep.calls = []
    runner = CurationRunner(work, LocalExecutor(workers=1, show_progress=False), {"filter": 0.0})
    with pytest.raises(RuntimeError, match="simulated crash"):
        runner.run(steps)
    assert CountingStep.calls == ["part-00000", "part-00001"] and not work.summary("sum").exists()
    runner.run(steps)
    assert CountingStep.calls == ["part-00000", "part-00001", "part-00001", "part-00002"]
    assert work.done("sum") == {"rows": 33} and SummingStep.calls == 1
    runner.run(steps)  # all done: nothing runs again
    assert len(CountingStep.calls) == 4 and SummingStep.calls == 1


def test_local_map_with_builds_the_resource_once_and_only_when_needed():
    built = []

    def make():
        built.append(1)
        return {"offset": 100}

    ex = LocalExecutor(workers=2, show_progress=False)
    assert ex.map_with(make, lambda r, x: x + r["offset"], [1, 2, 3], "teacher") == [101, 102, 103]
    assert len(built) == 1
    assert ex.map_with(make, lambda r, x: x, [], "teacher") == [] and len(built) == 1

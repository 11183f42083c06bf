"""Exact and MinHash near-duplicate removal as curation steps (datatrove's Signature -> Buckets ->
Cluster -> Filter), the same on every executor:

    dedup-signatures  map, per shard:      gid, exact-key hash and MinHash signature of each row
    dedup-exact       global:              exact duplicates (first row wins); only their gids travel on
    dedup-bands       map, per shard:      band keys of the rows left, split into P hash partitions
    dedup-edges       map, per partition:  LSH candidate edges of one partition, from every shard
    dedup-clusters    global:              the edges checked, near clusters, each removed row's head
    dedup-filter      map, per shard:      removed rows rejected (`dedup:exact` / `dedup:near`)

A bucket (band, key) lies in one partition (key mod P), so the partitions' edges, united, are the
candidate edges over all rows (`minhash.candidate_edges`); only edges (few, when duplicates are rare)
reach the driver. The decisions are `DedupStage.exact` / `.near`, which `DedupStage.run` uses in memory.
"""

from __future__ import annotations

import time

import numpy as np

from conan_embed.curate import minhash
from conan_embed.curate.curation_record import Record
from conan_embed.curate.curation_steps import GlobalStep, ShardStep, WorkArea
from conan_embed.curate.dedup import DedupStage
from conan_embed.curate.io import Shard
from conan_embed.data.records import read_records


class DedupSignatures(ShardStep):
    """Per shard: `work/dedup-signatures/<shard>.npz` (gid, hash: 16 B per row) and `.sig.npy` (the
    signatures, memory-mapped by the later steps)."""

    name = "dedup-signatures"
    timing = "dedup"

    def __init__(self, work: WorkArea, dedup: DedupStage, source: str):
        super().__init__(work)
        self.dedup, self.source = dedup, source

    def run(self, shard: Shard) -> dict:
        arrays = self.dedup.prepare(self.work.read_rows(self.source, shard))
        np.save(self.work.folder(self.name) / f"{shard.name}.sig.npy", arrays.pop("sig"))
        np.savez(self.work.folder(self.name) / f"{shard.name}.npz", **arrays)
        return {"rows": len(arrays["gid"])}


def row_keys(work: WorkArea, shard: Shard) -> dict[str, np.ndarray]:
    """A shard's gids and exact-key hashes (DedupSignatures)."""
    return dict(np.load(work.folder(DedupSignatures.name) / f"{shard.name}.npz"))


def signatures(work: WorkArea, shard: Shard) -> np.ndarray:
    return np.load(work.folder(DedupSignatures.name) / f"{shard.name}.sig.npy", mmap_mode="r")


def split_by_shard(work: WorkArea, gids: np.ndarray) -> list[np.ndarray]:
    """Sorted gids cut at the shards' boundaries: each shard's own."""
    cuts = np.searchsorted(gids, [s.gid_start for s in work.shards[1:]])
    return np.split(gids, cuts)


class DedupExact(GlobalStep):
    """Exact duplicates over all shards: `work/dedup-exact/removed.npz` (gid, head), sorted by gid."""

    name = "dedup-exact"
    timing = "dedup"

    def __init__(self, work: WorkArea, dedup: DedupStage):
        super().__init__(work)
        self.dedup = dedup

    def run(self) -> dict:
        loaded = [row_keys(self.work, s) for s in self.work.shards]
        gid = np.concatenate([a["gid"] for a in loaded]) if loaded else np.zeros(0, np.int64)
        hashes = np.concatenate([a["hash"] for a in loaded]) if loaded else np.zeros(0, np.uint64)
        removed = sorted(self.dedup.exact(gid, hashes).items())
        self.work.folder(self.name).mkdir(parents=True, exist_ok=True)
        np.savez(self.work.folder(self.name) / "removed.npz", gid=np.array([g for g, _ in removed], np.int64),
                 head=np.array([h for _, (_, h) in removed], np.int64))
        return {"removed": len(removed)}


def exact_removed(work: WorkArea) -> dict[str, np.ndarray]:
    return dict(np.load(work.folder(DedupExact.name) / "removed.npz"))


class DedupBands(ShardStep):
    """Per shard: the band keys of the rows that are no exact duplicate, as `minhash.BAND_ROW` rows
    grouped by partition (`work/dedup-bands/<shard>.npy`); the marker holds where each partition starts."""

    name = "dedup-bands"
    timing = "dedup"

    def __init__(self, work: WorkArea, dedup: DedupStage, partitions: int):
        super().__init__(work)
        self.dedup, self.partitions = dedup, partitions

    def items(self) -> dict:
        drop = split_by_shard(self.work, exact_removed(self.work)["gid"])
        return {s.name: (s, d) for s, d in zip(self.work.shards, drop)}

    def run(self, job: tuple[Shard, np.ndarray]) -> dict:
        shard, drop = job
        gid = row_keys(self.work, shard)["gid"]
        keep = ~np.isin(gid, drop)
        keys = self.dedup.detector.band_keys(signatures(self.work, shard)[keep])
        rows, starts = minhash.partition_band_keys(keys, gid[keep], self.partitions)
        np.save(self.work.folder(self.name) / f"{shard.name}.npy", rows)
        return {"rows": int(keep.sum()), "starts": starts.tolist()}


class DedupEdges(ShardStep):
    """Per hash partition: its rows from every shard's band file, bucketed into candidate edges
    (`work/dedup-edges/pNNNNN.npy`)."""

    name = "dedup-edges"
    timing = "dedup"

    def __init__(self, work: WorkArea, partitions: int):
        super().__init__(work)
        self.partitions = partitions

    def items(self) -> dict:
        return {f"p{j:05d}": j for j in range(self.partitions)}

    def run(self, j: int) -> dict:
        pieces = []
        for shard in self.work.shards:
            lo, hi = self.work.done(DedupBands.name, shard.name)["starts"][j:j + 2]
            if hi > lo:  # (an empty slice is never memory-mapped)
                rows = np.load(self.work.folder(DedupBands.name) / f"{shard.name}.npy", mmap_mode="r")
                pieces.append(np.asarray(rows[lo:hi]))
        rows = np.concatenate(pieces) if pieces else np.zeros(0, minhash.BAND_ROW)
        edges = minhash.partition_edges(rows)
        np.save(self.work.folder(self.name) / f"p{j:05d}.npy", edges)
        return {"rows": len(rows), "edges": len(edges)}


class DedupClusters(GlobalStep):
    """Exact duplicates, then the near clusters from the checked edges; each removed row names its
    cluster head's id (`removed`: {gid: [rule, ref]}, sorted by gid). `seconds` counts the dedup steps
    of this run so far (`timings["dedup"]`, kept by the step runner) and this one."""

    name = "dedup-clusters"
    timing = "dedup"

    def __init__(self, work: WorkArea, dedup: DedupStage, source: str, partitions: int, timings: dict):
        super().__init__(work)
        self.dedup, self.source, self.partitions, self.timings = dedup, source, partitions, timings
        self._records: dict[int, Record] = {}

    def _records_by_gid(self, ids) -> dict[int, Record]:
        """The rows with these gids, reading only the shards that hold them (once)."""
        missing = {int(i) for i in ids} - self._records.keys()
        for s in {self.work.shard_of(g).index: self.work.shard_of(g) for g in missing}.values():
            for data in read_records(self.work.folder(self.source) / f"{s.name}.jsonl"):
                if data["gid"] in missing:
                    self._records[data["gid"]] = Record.from_work(data)
        return {int(i): self._records[int(i)] for i in ids}

    def _signatures(self, ids) -> dict:
        out = {}
        for shard in self.work.shards:
            gid = row_keys(self.work, shard)["gid"]
            rows = np.flatnonzero(np.isin(gid, ids))
            if len(rows):
                out.update(zip(gid[rows].tolist(), signatures(self.work, shard)[rows]))
        return out

    def _edges(self) -> np.ndarray:
        found = [np.load(self.work.folder(DedupEdges.name) / f"p{j:05d}.npy") for j in range(self.partitions)]
        return minhash.unique_edges(np.concatenate(found) if found else np.zeros((0, 2), np.int64))

    def run(self) -> dict:
        t0 = time.perf_counter()
        exact = exact_removed(self.work)
        removed = {g: ("exact", h) for g, h in zip(exact["gid"].tolist(), exact["head"].tolist())}
        if self.dedup.config.near:
            gid = np.concatenate([row_keys(self.work, s)["gid"] for s in self.work.shards])
            live = gid[~np.isin(gid, exact["gid"])]
            removed |= self.dedup.near(live, self._edges(),
                                       lambda ids: {g: self.dedup.key(r) for g, r in self._records_by_gid(ids).items()},
                                       self._signatures)
        heads = self._records_by_gid({h for _, h in removed.values()})
        detector = self.dedup.detector
        return {"removed": {str(g): [rule, heads[h].ref] for g, (rule, h) in sorted(removed.items())},
                "bands": detector.bands, "rows": detector.rows,
                "seconds": round(self.timings["dedup"] + time.perf_counter() - t0, 2)}


class DedupFilter(ShardStep):
    """Per shard: the removed rows rejected (`rejected/<shard>-dedup.*`, with `duplicate_of`), the rest
    on to `work/dedup-filter/`."""

    name = "dedup-filter"
    timing = "dedup"
    rejects = "dedup"

    def __init__(self, work: WorkArea, dedup: DedupStage, source: str):
        super().__init__(work)
        self.dedup, self.source = dedup, source

    def items(self) -> dict:
        removed_in: dict[str, dict] = {s.name: {} for s in self.work.shards}
        for g, v in self.work.done(DedupClusters.name)["removed"].items():
            removed_in[self.work.shard_of(int(g)).name][g] = v
        return {s.name: (s, removed_in[s.name]) for s in self.work.shards}

    def run(self, job: tuple[Shard, dict]) -> dict:
        shard, removed = job
        records = self.work.read_rows(self.source, shard)
        for r in records:
            if str(r.gid) in removed:
                rule, ref = removed[str(r.gid)]
                r.reject(f"dedup:{rule}", f"{self.dedup.config.key} is a duplicate of {ref}", duplicate_of=ref)
        return self.pass_on(shard, records)


def dedup_steps(work: WorkArea, dedup: DedupStage, source: str, timings: dict) -> list:
    """The dedup steps in order, reading the rows `source` left; the near-duplicate ones only when on."""
    partitions = max(len(work.shards), 2)  # about one shard's band keys per partition
    near = [DedupBands(work, dedup, partitions), DedupEdges(work, partitions)] if dedup.config.near else []
    return [DedupSignatures(work, dedup, source), DedupExact(work, dedup), *near,
            DedupClusters(work, dedup, source, partitions, timings), DedupFilter(work, dedup, source)]

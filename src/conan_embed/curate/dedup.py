"""Exact and MinHash near-duplicate removal (InternLM2 defaults: character 5-grams, 128 permutations,
Jaccard 0.7). Every cluster keeps its smallest global row id, i.e. the first row in input order, so the
result does not depend on how rows are split into shards or workers.

`NearDuplicateDetector` holds the array code; `DedupStage` applies it to records. The pipeline
computes the band keys per shard and the buckets per hash partition (dedup_steps.py): the edges, the
checks and the union-find are the same functions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from conan_embed.curate import minhash
from conan_embed.curate.curate_config import DedupConfig
from conan_embed.curate.curation_record import Record
from conan_embed.curate.stage_interface import Stage


def dedup_key(query: str, passage: str, key: str) -> str:
    """The text two rows must share to count as duplicates."""
    return {"pair": f"{query}\n{passage}", "passage": passage, "query": query}[key]


class NearDuplicateDetector:
    """MinHash LSH over character n-grams with each candidate pair checked before it counts.

    >>> det = NearDuplicateDetector(DedupConfig())
    >>> texts = ["今天天气很好，我们一起去公园散步，然后去吃午饭吧。", "今天天气很好，我们一起去公园散步，然后去吃午饭吗。",
    ...          "明天会下雨，记得带伞。"]
    >>> det.heads(texts).tolist()   # row 1 is a near-duplicate of row 0
    [0, 0, 2]
    """

    def __init__(self, config: DedupConfig):
        self.config = config
        if config.bands is not None:
            self.bands, self.rows = config.bands, config.rows
        else:
            self.bands, self.rows = minhash.optimal_bands(config.threshold, config.num_perm, *config.weights)
        self.a, self.b = minhash.permutations(config.num_perm, config.seed)

    def signatures(self, texts: list[str]) -> np.ndarray:
        return minhash.signatures(texts, self.a, self.b, self.config.ngram)

    def band_keys(self, sig: np.ndarray) -> np.ndarray:
        return minhash.band_keys(sig, self.bands, self.rows)

    def check_edges(self, edges: np.ndarray, texts: Callable[[np.ndarray], dict],
                    signatures: Callable[[np.ndarray], dict] | None = None) -> np.ndarray:
        """The candidate edges whose pair really is similar: exact n-gram Jaccard (`verify: exact`,
        `texts(ids)` -> {id: text}), the share of equal signature slots (`signature`), or all (`none`)."""
        if not len(edges) or self.config.verify == "none":
            return edges
        ids = np.unique(edges)
        t = self.config.threshold
        if self.config.verify == "signature":
            sig = signatures(ids)
            ok = [(sig[u] == sig[v]).mean() >= t for u, v in edges.tolist()]
        else:
            ok = minhash.edge_jaccard(edges, texts(ids), self.config.ngram) >= t - 1e-12
        return edges[np.asarray(ok, dtype=bool)]

    def heads(self, texts: list[str], ids: np.ndarray | None = None) -> np.ndarray:
        """Each row's cluster head (the smallest id of its near-duplicate cluster); all in memory."""
        ids = np.arange(len(texts), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        sig = self.signatures(texts)
        edges = minhash.candidate_edges(self.band_keys(sig), ids)
        pos = {int(i): k for k, i in enumerate(ids)}
        edges = self.check_edges(edges, lambda xs: {int(i): texts[pos[int(i)]] for i in xs},
                                 lambda xs: {int(i): sig[pos[int(i)]] for i in xs})
        return minhash.cluster_heads(ids, edges)


def exact_heads(hashes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """For rows with 64-bit key hashes, each row's head: the smallest id with the same hash (a bucket
    per hash, as LSH does per band key)."""
    return minhash.cluster_heads(ids, minhash.bucket_edges(hashes, ids))


class DedupStage(Stage):
    """Global stage: exact duplicates (`dedup:exact`), then near-duplicates (`dedup:near`), each
    rejected row naming its kept representative in `duplicate_of`. `run(records)` does it in memory;
    the pipeline (dedup_steps.py) calls the same methods: `prepare` per shard, `exact` and `near` once."""

    name = "dedup"
    scope = "global"

    def __init__(self, config: DedupConfig, fields: dict[str, str]):
        super().__init__()
        self.config, self.fields = config, fields
        self.detector = NearDuplicateDetector(config)

    def key(self, record: Record) -> str:
        return dedup_key(record.row[self.fields["query"]], record.row[self.fields["passage"]], self.config.key)

    def prepare(self, records: list[Record]) -> dict[str, np.ndarray]:
        """Per shard: ids, exact-key hashes and MinHash signatures of the rows still in."""
        live = [r for r in records if r.reason is None]
        keys = [self.key(r) for r in live]
        return {"gid": np.array([r.gid for r in live], dtype=np.int64),
                "hash": np.array([minhash.hash_text64(k) for k in keys], dtype=np.uint64),
                "sig": self.detector.signatures(keys) if self.config.near else
                np.zeros((len(keys), 0), dtype=np.uint32)}

    def exact(self, gid: np.ndarray, hashes: np.ndarray) -> dict[int, tuple]:
        """{removed gid: ("exact", head gid)}: every row whose key hash an earlier row has."""
        if not self.config.exact or not len(gid):
            return {}
        heads = exact_heads(hashes, gid)
        return {g: ("exact", h) for g, h in zip(gid[heads != gid].tolist(), heads[heads != gid].tolist())}

    def near(self, live: np.ndarray, edges: np.ndarray, texts: Callable[[np.ndarray], dict],
             signatures: Callable[[np.ndarray], dict]) -> dict[int, tuple]:
        """{removed gid: ("near", head gid)} among `live` (sorted gids, exact duplicates already out),
        from their LSH candidate `edges`, wherever those were computed (in memory, or by partition)."""
        if not self.config.near or not len(live):
            return {}
        heads = minhash.cluster_heads(live, self.detector.check_edges(edges, texts, signatures))
        return {g: ("near", h) for g, h in zip(live[heads != live].tolist(), heads[heads != live].tolist())}

    def run(self, records):
        records = list(records)
        arrays = self.prepare(records)
        live = {r.gid: r for r in records if r.reason is None}
        sig_of = {g: s for g, s in zip(arrays["gid"].tolist(), arrays["sig"])}
        removed = self.exact(arrays["gid"], arrays["hash"])
        alive = ~np.isin(arrays["gid"], list(removed))
        if self.config.near and alive.any():  # (the pipeline gets these edges partition by partition)
            edges = minhash.candidate_edges(self.detector.band_keys(arrays["sig"][alive]), arrays["gid"][alive])
            removed |= self.near(arrays["gid"][alive], edges, lambda ids: {int(i): self.key(live[int(i)]) for i in ids},
                                 lambda ids: {int(i): sig_of[int(i)] for i in ids})
        self.counters["in"] += len(live)
        for r in records:
            if r.gid in removed:
                rule, head = removed[r.gid]
                r.reject(f"{self.name}:{rule}", duplicate_of=live[head].ref)
                self.counters[f"dropped:{rule}"] += 1
            elif r.reason is None:
                self.counters["kept"] += 1
        return records

"""MinHash near-duplicate detection in numpy: signatures, LSH buckets, exact checks, union-find.

Pure functions on arrays, so that the local and the Ray executor run the very same code (design notes:
docs/design-curation.md §2). Shingles are character n-grams (Chinese has no word boundaries) hashed
with a rolling polynomial + murmur3's fmix64, deterministic across processes and machines (Python's
`hash()` is not). Permutation k maps a shingle hash h to `a_k * h + b_k mod 2^32` (datasketch 2.0's
default `affine32` scheme); the signature is the minimum per permutation.

Speed comes from the memory layout: one contiguous 1-D pass per permutation over a cache-sized chunk
of shingles and `np.minimum.reduceat` over the documents' offsets (a 2-D shingles x permutations array
was measured 17x slower).

>>> a, b = permutations(128, seed=1)
>>> sig = signatures(["今天天气很好，我们去公园散步吧。", "今天天气很好，我们去公园散步吗。", "完全不同的一句话"], a, b)
>>> bool((sig[0] == sig[1]).mean() > 0.5), bool((sig[0] == sig[2]).mean() < 0.1)
(True, True)
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

U64 = np.uint64
_CHUNK_SHINGLES = 1 << 18  # 1 MB of uint32 per pass: stays in cache


def fmix64(h: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser: every input bit affects every output bit."""
    h = h ^ (h >> U64(33))
    h = h * U64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> U64(33))
    h = h * U64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> U64(33))


def hash_text32(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=4).digest(), "little")


def hash_text64(text: str) -> int:
    """A stable 64-bit hash of a whole text (exact-duplicate keys)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def shingle_hashes(texts: list[str], ngram: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """uint32 hashes of every character n-gram of every text, and each text's shingle count.

    A text shorter than `ngram` characters is one shingle: the whole text."""
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    total = int(lengths.sum())
    cps = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(U64)
    cps = np.concatenate([cps, np.zeros(ngram, dtype=U64)])
    h = np.zeros(total, dtype=U64)
    with np.errstate(over="ignore"):
        for k in range(ngram):  # polynomial over the window, wrapping mod 2^64
            h = h * U64(0x100000001B3) + cps[k:k + total] + U64(1)
        ends = np.repeat(np.cumsum(lengths), lengths)
        valid = np.arange(total) + ngram <= ends  # windows inside their own text
        hashes = (fmix64(h[valid]) >> U64(32)).astype(np.uint32)
    counts = np.maximum(lengths - ngram + 1, 0)
    short = np.flatnonzero(lengths < ngram)
    if len(short):
        extra = np.array([hash_text32(texts[i]) for i in short], dtype=np.uint32)
        hashes = np.insert(hashes, np.cumsum(counts)[short], extra)  # after the preceding texts' shingles
        counts[short] = 1
    return hashes, counts


def permutations(num_perm: int = 128, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of each permutation: a odd, both uint32, drawn from a seeded generator."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**32, num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    b = rng.integers(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32)
    return a, b


def signatures(texts: list[str], a: np.ndarray, b: np.ndarray, ngram: int = 5) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures."""
    sig = np.empty((len(texts), len(a)), dtype=np.uint32)
    if not texts:
        return sig
    hashes, counts = shingle_hashes(texts, ngram)
    starts = np.concatenate([[0], np.cumsum(counts)])
    d = 0
    while d < len(texts):  # documents in chunks of about _CHUNK_SHINGLES shingles
        e = int(np.searchsorted(starts, starts[d] + _CHUNK_SHINGLES, side="right")) - 1
        e = min(max(e, d + 1), len(texts))
        hs = hashes[starts[d]:starts[e]]
        offsets = starts[d:e] - starts[d]
        tmp = np.empty_like(hs)
        for k in range(len(a)):
            np.multiply(hs, a[k], out=tmp)
            np.add(tmp, b[k], out=tmp)
            sig[d:e, k] = np.minimum.reduceat(tmp, offsets)
        d = e
    return sig


@lru_cache(maxsize=64)
def optimal_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the weighted false-positive and
    false-negative areas under the LSH S-curve P(s) = 1 - (1 - s^r)^b (datasketch's `_optimal_param`)."""
    from scipy.integrate import quad

    best, best_err = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = quad(lambda s, r=r, b=b: 1 - (1 - s ** r) ** b, 0.0, threshold)[0]
            fn = quad(lambda s, r=r, b=b: (1 - s ** r) ** b, threshold, 1.0)[0]
            err = fp_weight * fp + fn_weight * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(bands, n) uint64 bucket keys: band j's `rows` signature values folded into one hash."""
    keys = np.empty((bands, sig.shape[0]), dtype=U64)
    with np.errstate(over="ignore"):
        for j in range(bands):
            k = np.full(sig.shape[0], U64(j + 1), dtype=U64)
            for c in range(j * rows, (j + 1) * rows):
                k = fmix64(k * U64(0x9E3779B97F4A7C15) + sig[:, c].astype(U64))
            keys[j] = k
    return keys


def bucket_edges(keys: np.ndarray, ids: np.ndarray, bands: np.ndarray | None = None) -> np.ndarray:
    """(m, 2) int64 edges (member, smallest id of its bucket) for every bucket with 2+ members.

    `keys` and `ids` are flat and aligned; `bands` (optional, aligned) keeps equal keys of different
    bands apart. Any partition of the rows by key gives the same edges, which is what lets a
    distributed executor call this per hash partition."""
    ids = np.asarray(ids, dtype=np.int64)
    band = np.zeros(len(ids), dtype=np.int64) if bands is None else np.asarray(bands, dtype=np.int64)
    order = np.lexsort((ids, keys, band))
    sk, sb, si = keys[order], band[order], ids[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (sk[1:] != sk[:-1]) | (sb[1:] != sb[:-1])
    first = si[np.flatnonzero(new)][np.cumsum(new) - 1]  # each row's bucket head = its smallest id
    return np.stack([si[~new], first[~new]], axis=1)


def candidate_edges(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Unique (u, v) edges, u > v, from (bands, n) keys of the rows `ids`."""
    bands, n = keys.shape
    edges = bucket_edges(keys.reshape(-1), np.tile(ids, bands), np.repeat(np.arange(bands), n))
    return unique_edges(edges)


BAND_ROW = np.dtype([("band", np.int64), ("key", U64), ("id", np.int64)])


def partition_band_keys(keys: np.ndarray, ids: np.ndarray, partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """(bands, n) keys of the rows `ids` as flat `BAND_ROW` rows grouped by hash partition (key mod
    `partitions`), and where each partition starts (`partitions + 1` offsets).

    A bucket (band, key) lies in one partition, so `bucket_edges` per partition, united, equals
    `candidate_edges` over all rows: the partitions can be merged on different workers."""
    bands, n = keys.shape
    flat = np.empty(bands * n, dtype=BAND_ROW)
    flat["band"] = np.repeat(np.arange(bands, dtype=np.int64), n)
    flat["key"] = keys.reshape(-1)
    flat["id"] = np.tile(np.asarray(ids, dtype=np.int64), bands)
    part = (flat["key"] % U64(partitions)).astype(np.int64)
    flat = flat[np.argsort(part, kind="stable")]
    starts = np.concatenate([[0], np.cumsum(np.bincount(part, minlength=partitions))])
    return flat, starts


def partition_edges(rows: np.ndarray) -> np.ndarray:
    """`bucket_edges` of `BAND_ROW` rows: all rows of one hash partition, from every shard."""
    return bucket_edges(rows["key"], rows["id"], rows["band"])


def unique_edges(edges: np.ndarray) -> np.ndarray:
    if not len(edges):
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(edges.astype(np.int64), axis=0)


def char_ngrams(text: str, ngram: int = 5) -> set[str]:
    return {text[i:i + ngram] for i in range(max(len(text) - ngram + 1, 1))}


def jaccard(x: str, y: str, ngram: int = 5) -> float:
    """Exact Jaccard similarity of two texts' character n-gram sets."""
    a, b = char_ngrams(x, ngram), char_ngrams(y, ngram)
    return len(a & b) / len(a | b)


def edge_jaccard(edges: np.ndarray, texts: dict[int, str], ngram: int = 5,
                 chunk_elements: int = 1 << 24) -> np.ndarray:
    """Jaccard similarity of each edge's two texts over their character n-gram sets, vectorised.

    Each text's n-grams are its shingle hashes (32-bit; two distinct n-grams of one pair collide with
    probability ~ m^2 / 2^33, negligible next to the threshold), made unique per text with one sort;
    per edge, both sides' sets are tagged with the edge number, sorted together, and the adjacent equal
    values are the intersection. 4-5x faster than Python sets of strings on long texts.
    """
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if not len(edges):
        return np.zeros(0)
    ids = np.unique(edges)
    hashes, counts = shingle_hashes([texts[int(i)] for i in ids], ngram)
    doc = np.repeat(np.arange(len(ids), dtype=U64), counts)
    keyed = np.sort((doc << U64(32)) | hashes.astype(U64))  # (np.unique's hash path is 3x slower here)
    keyed = keyed[np.concatenate([[True], keyed[1:] != keyed[:-1]])]  # unique within each text
    values = (keyed & U64(0xFFFFFFFF)).astype(U64)
    starts = np.searchsorted(keyed >> U64(32), np.arange(len(ids) + 1, dtype=U64))
    sizes = np.diff(starts)
    side = np.searchsorted(ids, edges)  # (m, 2) text positions
    out = np.empty(len(edges))
    per_edge = sizes[side].sum(1)
    bounds = np.searchsorted(np.cumsum(per_edge), np.arange(chunk_elements, per_edge.sum() + chunk_elements,
                                                           chunk_elements), side="right")
    lo = 0
    for hi in [*bounds.tolist(), len(edges)]:
        hi = max(hi, lo + 1) if lo < len(edges) else lo
        if hi <= lo:
            continue
        parts = []
        for k in (0, 1):
            d = side[lo:hi, k]
            lens = sizes[d]
            first = np.repeat(starts[d] - (np.cumsum(lens) - lens), lens)
            pos = np.arange(int(lens.sum())) + first
            tag = np.repeat(np.arange(hi - lo, dtype=U64), lens) << U64(32)
            parts.append(tag | values[pos])
        merged = np.sort(np.concatenate(parts))
        same = merged[1:] == merged[:-1]
        inter = np.bincount((merged[1:][same] >> U64(32)).astype(np.int64), minlength=hi - lo)
        a, b = sizes[side[lo:hi, 0]], sizes[side[lo:hi, 1]]
        out[lo:hi] = inter / (a + b - inter)
        lo = hi
    return out


def union_find(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Connected components of an edge list over nodes 0..n-1; each node's label is its component's
    smallest node. Array-based (hook roots to the smaller root, then jump pointers), so it needs no
    Python loop per edge and gives the same labels whatever the edge order."""
    parent = np.arange(n, dtype=np.int64)
    u, v = np.asarray(u, dtype=np.int64), np.asarray(v, dtype=np.int64)
    while True:
        pu, pv = parent[u], parent[v]
        lo, hi = np.minimum(pu, pv), np.maximum(pu, pv)
        differ = lo != hi
        if not differ.any():
            return parent
        np.minimum.at(parent, hi[differ], lo[differ])
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def cluster_heads(ids: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """For each id in `ids` (sorted, unique), the smallest id of its cluster under `edges`."""
    ids = np.asarray(ids, dtype=np.int64)
    if not len(edges):
        return ids.copy()
    nodes = np.unique(edges)  # remap: memory goes with the nodes that have an edge, not with all ids
    local = np.searchsorted(nodes, edges)
    labels = nodes[union_find(len(nodes), local[:, 0], local[:, 1])]
    heads = ids.copy()
    pos = np.searchsorted(nodes, ids)
    pos = np.minimum(pos, len(nodes) - 1)
    hit = nodes[pos] == ids
    heads[hit] = labels[pos[hit]]
    return heads

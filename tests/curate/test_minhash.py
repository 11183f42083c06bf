"""MinHash pieces against slow references: signatures, band choice, union-find, cluster heads."""

from __future__ import annotations

import numpy as np

from conan_embed.curate import minhash

TEXTS = ["今天天气很好，我们去公园散步吧。", "今天天气很好，我们去公园散步吗。", "保险", "人寿保险的受益人是否要缴纳税款？",
         "", "ab", "abcde", "房主保险理赔如何工作？不同的公司可能不同地处理索赔结算过程。"]


def _reference_signature(text: str, a, b, ngram: int = 5) -> np.ndarray:
    """One text, pure Python: the same shingle hash and permutations, no vectorisation."""
    mask64 = (1 << 64) - 1
    if len(text) < ngram:
        hashes = [minhash.hash_text32(text)]
    else:
        hashes = []
        for i in range(len(text) - ngram + 1):
            h = 0
            for ch in text[i:i + ngram]:
                h = (h * 0x100000001B3 + ord(ch) + 1) & mask64
            mixed = int(minhash.fmix64(np.array([h], dtype=np.uint64))[0])
            hashes.append(mixed >> 32)
    return np.array([min((int(ak) * h + int(bk)) & 0xFFFFFFFF for h in hashes) for ak, bk in zip(a, b)],
                    dtype=np.uint32)


def test_signatures_equal_a_pure_python_reference():
    a, b = minhash.permutations(32, seed=3)
    sig = minhash.signatures(TEXTS, a, b)
    assert sig.shape == (len(TEXTS), 32)
    for text, row in zip(TEXTS, sig):
        np.testing.assert_array_equal(row, _reference_signature(text, a, b))


def test_signatures_do_not_depend_on_chunking(monkeypatch):
    a, b = minhash.permutations(16)
    texts = TEXTS * 30
    whole = minhash.signatures(texts, a, b)
    monkeypatch.setattr(minhash, "_CHUNK_SHINGLES", 7)
    np.testing.assert_array_equal(minhash.signatures(texts, a, b), whole)


def test_estimated_jaccard_is_close_to_exact():
    import random

    rng = random.Random(0)
    base = "人寿保险的受益人在收到和处理所需文件后三十至六十天内可以领取死亡抚恤金，为避免对大型房地产的征税，可以使用不可撤销的人寿保险信托。"
    a, b = minhash.permutations(128)
    errors = []
    for _ in range(20):
        chars = list(base)
        for p in rng.sample(range(0, len(chars), 5), rng.randint(1, 6)):
            chars[p] = "龘"
        other = "".join(chars)
        sig = minhash.signatures([base, other], a, b)
        errors.append(abs((sig[0] == sig[1]).mean() - minhash.jaccard(base, other)))
    assert max(errors) < 0.15 and np.mean(errors) < 0.06


def test_optimal_bands_match_datasketch():
    assert minhash.optimal_bands(0.7, 128, 0.5, 0.5) == (14, 9)  # MinHashLSH(threshold=0.7, num_perm=128)
    assert minhash.optimal_bands(0.7, 128, 0.2, 0.8) == (18, 7)  # our default: favour recall


def test_union_find_equals_scipy_components():
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(0)
    n, e = 2000, 1500
    u, v = rng.integers(0, n, e), rng.integers(0, n, e)
    labels = minhash.union_find(n, u, v)
    _, comp = connected_components(coo_matrix((np.ones(e), (u, v)), shape=(n, n)), directed=False)
    smallest = {}
    for node, c in enumerate(comp):
        smallest.setdefault(c, node)
    np.testing.assert_array_equal(labels, [smallest[c] for c in comp])


def test_cluster_heads_are_the_smallest_id_whatever_the_edge_order():
    ids = np.array([2, 5, 9, 11, 40, 41])
    edges = np.array([[41, 9], [9, 5], [40, 11]])
    expected = [2, 5, 5, 11, 11, 5]
    np.testing.assert_array_equal(minhash.cluster_heads(ids, edges), expected)
    np.testing.assert_array_equal(minhash.cluster_heads(ids, edges[::-1, ::-1]), expected)


def test_bucket_edges_are_the_same_for_any_partition_of_the_rows():
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 30, 400).astype(np.uint64)
    ids = rng.permutation(400)
    bands = rng.integers(0, 3, 400)
    whole = minhash.unique_edges(minhash.bucket_edges(keys, ids, bands))
    part = keys % np.uint64(4)
    pieces = [minhash.bucket_edges(keys[part == p], ids[part == p], bands[part == p]) for p in range(4)]
    np.testing.assert_array_equal(minhash.unique_edges(np.concatenate(pieces)), whole)

"""Exact and near-duplicate removal: planted copies at known Jaccard, the first row kept, determinism."""

from __future__ import annotations

import random

import numpy as np

from conan_embed.curate.curate_config import DedupConfig
from conan_embed.curate.dedup import DedupStage, NearDuplicateDetector
from conan_embed.curate.minhash import jaccard
from conan_embed.curate.curation_record import Record

FIELDS = {"query": "query", "passage": "passage"}


def plant(text: str, target: float, rng: random.Random) -> str:
    """Substitute k characters >= 5 apart: J = (m - 5k) / (m + 5k) for m distinct 5-grams."""
    m = len(text) - 4
    k = max(1, round(m * (1 - target) / (5 * (1 + target))))
    chars = list(text)
    for p in rng.sample(range(0, len(chars), 5), k):
        chars[p] = "龘" if chars[p] != "龘" else "靐"
    return "".join(chars)


def test_planted_copies_are_removed_and_name_their_original(shipped_pairs):
    rng = random.Random(0)
    originals = [p for p in shipped_pairs if len(p["passage"]) >= 120][:60]
    rows = [dict(p) for p in shipped_pairs]
    planted = {}
    for i, p in enumerate(originals):
        target = 0.9 if i % 2 == 0 else 0.3
        copy = {**p, "id": f"copy{i}", "passage": plant(p["passage"], target, rng)}
        planted[copy["id"]] = (p["id"], jaccard(p["query"] + "\n" + p["passage"], copy["query"] + "\n" + copy["passage"]))
        rows.insert(rng.randrange(rows.index(p) + 1, len(rows) + 1), copy)  # after its original
    records = [Record(r, i, f"t:{i + 1}") for i, r in enumerate(rows)]
    stage = DedupStage(DedupConfig(), FIELDS)
    out = {r.row["id"]: r for r in stage.run(records)}
    for cid, (orig, j) in planted.items():
        r = out[cid]
        if j >= 0.8:
            assert r.reason == "dedup:near" and r.duplicate_of == orig, (cid, j, r.reason)
        elif j < 0.5:
            assert r.reason is None, (cid, j, r.reason, r.duplicate_of)
    assert stage.counters["in"] == len(rows) == stage.counters["kept"] + sum(
        v for k, v in stage.counters.items() if k.startswith("dropped:"))


def test_exact_duplicates_go_first_and_the_first_row_wins():
    text = "人寿保险的受益人一般不需要为死亡抚恤金缴纳所得税，但遗产税要看具体情况。"
    rows = [{"query": "问", "passage": text + "甲", "id": "a"}, {"query": "问", "passage": text, "id": "b"},
            {"query": "问", "passage": text, "id": "c"}, {"query": "问", "passage": text + "乙", "id": "d"}]
    out = DedupStage(DedupConfig(), FIELDS).run([Record(r, i, f"t:{i + 1}") for i, r in enumerate(rows)])
    assert [(r.reason, r.duplicate_of) for r in out] == [
        (None, None), ("dedup:near", "a"), ("dedup:exact", "b"), ("dedup:near", "a")]
    out = DedupStage(DedupConfig(near=False), FIELDS).run([Record(r, i, "t") for i, r in enumerate(rows)])
    assert [r.reason for r in out] == [None, None, "dedup:exact", None]


def test_the_dedup_key_decides_what_counts_as_a_duplicate():
    answer = "您可以从每年的一月一日至二月十四日期间退出医疗保险优势计划，并切换回原始医疗保险。"
    rows = [{"query": "如何退出优势计划？", "passage": answer}, {"query": "优势计划可以退出吗？", "passage": answer}]
    def reasons(key):
        return [r.reason for r in DedupStage(DedupConfig(key=key), FIELDS).run(
            [Record(dict(r), i, "t") for i, r in enumerate(rows)])]
    assert reasons("passage") == [None, "dedup:exact"]
    assert reasons("query") == [None, None]


def test_heads_do_not_depend_on_row_order_beyond_the_ids(shipped_pairs):
    texts = [p["passage"] for p in shipped_pairs[:200]] * 2
    ids = np.arange(len(texts))
    det = NearDuplicateDetector(DedupConfig())
    heads = det.heads(texts, ids)
    perm = np.random.default_rng(0).permutation(len(texts))
    shuffled = det.heads([texts[i] for i in perm], ids[perm])
    np.testing.assert_array_equal(shuffled, heads[perm])
    assert (heads[200:] <= np.arange(200)).all()  # every second copy points at (a copy of) the first


def test_short_texts_and_verification_modes():
    texts = ["好", "好", "保险", "人寿保险", "今天天气很好，我们去公园散步吧。"]
    for verify in ("exact", "signature", "none"):
        heads = NearDuplicateDetector(DedupConfig(verify=verify)).heads(texts)
        assert heads.tolist()[:2] == [0, 0] and heads.tolist()[2:] == [2, 3, 4], verify

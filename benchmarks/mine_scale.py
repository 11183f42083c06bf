"""How `conan-embed mine` and its data scale, measured here and projected to the paper's 1.8M rows x 200
candidates over a corpus of 10M passages.

Synthetic data from the shipped text: passages are insuranceqa answers recombined (the head of one, the tail
of another, a character changed), queries are the shipped questions; ids are p<k>. Each step is timed at two
sizes at least, and projected with the growth those two sizes show (a log-log slope: 1.0 = linear):

- import: `conan_embed.data.importers.import_data` over FlagEmbedding JSONL ({query, pos: [1], neg: [7]}) of
  --import-rows / 2 and --import-rows rows, each in a fresh process; its seconds and its peak memory
  (ru_maxrss), which should not grow with the input. Skipped, with a note, where the importer is missing.
- encode: `conan-embed mine` on --encode-sample passages (and a quarter as many queries) with --model, in one
  process at half and full sample size, and in two processes (`--nproc 2`) at full size: texts/s, the 2-process
  speed-up of the encoding (the slower process's shards; encode_wall_ratio_2proc also counts rank 0's wait for
  the other process to start) and whether both runs wrote the same bytes (equal_2proc). Chunks of
  --encode-sample / 8 texts, so that the sample splits into shards.
- index and search: random unit vectors of the model's dim at the full sizes (--passages, --queries; not the
  model's embeddings: the cost depends on the sizes and dim only), with `offline.build_index` / `offline.search`
  for k = --candidates: flat at (queries, passages / 2), (queries, passages), (queries / 2, passages); ivf and
  hnsw built at passages / 2 and passages and searched for every query; index bytes per passage (faiss's
  serialised size); and `pick_candidates`, the per-row Python pass over a ranking.
- candidate I/O: the pool of --queries rows x --candidates (random corpus positions): mine's JSONL write
  (write_records), the pool's save and load (`write_candidate_pool` / `load_candidate_pool`: np.save/np.load,
  sha256 of the matrix and of the data and corpus files), at queries / 2 and queries; the matrix alone at
  --io-target-rows (1.8M: 1.44 GB at 200) with the file digests projected from the measured sha256 rate; and
  a training task's load (`TrainingTask`, the corpus read subtracted) with the pool at --queries rows and from
  the rows' lists (the old path) on --io-sample rows.

    .venv/bin/python benchmarks/mine_scale.py [--passages 200000] [--queries 50000] [--candidates 200] \\
        [--encode-sample 512] [--import-rows 20000] [--io-sample 5000] [--model e5-small] [--device cpu]

On a GPU machine (one process a GPU for the 2-process run; on one GPU both share it):

    .venv/bin/python benchmarks/mine_scale.py --device cuda --encode-sample 20000 --passages 1000000 \\
        --queries 200000 --indexes flat,ivf,hnsw

Smoke run (seconds): `--passages 2000 --queries 200 --candidates 20 --encode-sample 64 --import-rows 200
--io-sample 50 --io-target-rows 20000 --model <a tiny model folder> --device cpu`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from conan_embed.data.records import write_records

REPO = Path(__file__).resolve().parents[1]
IMPORT_CHILD = """
import json, resource, sys, time
from conan_embed.data.importers import import_data
t = time.perf_counter()
import_data([sys.argv[1]], sys.argv[2], progress=False)
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": time.perf_counter() - t, "peak_mb": peak_mb}))
"""


def growth(x1: float, t1: float, x2: float, t2: float) -> float:
    """The exponent b of t ~ x^b through two measurements."""
    return math.log(max(t2, 1e-9) / max(t1, 1e-9)) / math.log(x2 / x1)


def linear(x1: float, t1: float, x2: float, t2: float, x: float) -> float:
    """t at x on the line through two measurements (a fixed cost plus a cost per unit); proportional to x
    when noise makes the line fall."""
    slope = (t2 - t1) / (x2 - x1)
    return t2 + slope * (x - x2) if slope > 0 else t2 / x2 * x


def synthetic(passages: int, queries: int, seed: int = 0) -> tuple[list[str], list[str]]:
    from conan_embed.data.sources import insuranceqa_answers, insuranceqa_questions

    answers = [a for a in insuranceqa_answers().values() if len(a) >= 20]
    questions = [q.text for q in insuranceqa_questions("train")]
    chars = sorted({c for a in answers[:2000] for c in a})
    rng = random.Random(seed)
    out = []
    for k in range(passages):
        a, b = answers[k % len(answers)], answers[rng.randrange(len(answers))]
        text = a[: rng.randint(10, len(a))] + "，" + b[rng.randint(0, len(b) // 2):]
        at = rng.randrange(len(text))
        out.append(text[:at] + rng.choice(chars) + text[at + 1:])
    qs = [questions[k % len(questions)] + ("" if k < len(questions) else f"（{k // len(questions)}）")
          for k in range(queries)]
    return out, qs


def step_import(args, work: Path, passages: list[str], queries: list[str]) -> dict:
    try:
        import conan_embed.data.importers  # noqa: F401
    except ImportError as exc:
        print(f"import: skipped (conan_embed.data.importers is not importable: {exc})")
        return {"import": "skipped"}
    sizes, out = [max(1, args.import_rows // 2), args.import_rows], {}
    rng = random.Random(1)
    for n in sizes:
        source = work / f"import-{n}.jsonl"
        write_records(source, ({"query": queries[i % len(queries)], "pos": [passages[i % len(passages)]],
                              "neg": [passages[rng.randrange(len(passages))] for _ in range(7)]} for i in range(n)))
        done = subprocess.run([sys.executable, "-c", IMPORT_CHILD, str(source), str(work / f"imported-{n}")],
                              capture_output=True, text=True, cwd=REPO, check=True)
        out[n] = json.loads(done.stdout.strip().splitlines()[-1])
    (n1, r1), (n2, r2) = out.items()
    result = {"import_rows_per_s": round(n2 / r2["seconds"]), "import_growth": round(growth(n1, r1["seconds"], n2,
                                                                                            r2["seconds"]), 2),
              "import_s_1p8m": round(linear(n1, r1["seconds"], n2, r2["seconds"], args.target_rows)),
              "import_peak_mb_small": round(r1["peak_mb"]), "import_peak_mb_large": round(r2["peak_mb"]),
              "import_rows_small": n1, "import_rows_large": n2}
    print(f"import: {n1:,} rows {r1['seconds']:.1f} s, peak {r1['peak_mb']:.0f} MB; {n2:,} rows {r2['seconds']:.1f} s, "
          f"peak {r2['peak_mb']:.0f} MB; projected {result['import_s_1p8m']:,} s at {args.target_rows:,} rows")
    return result


def mine_run(args, work: Path, passages: list[str], queries: list[str], n: int, nproc: int) -> tuple[dict, Path]:
    folder = work / f"encode-{n}-{nproc}"
    write_records(folder / "corpus.jsonl", ({"id": f"p{k}", "text": t} for k, t in enumerate(passages[:n])))
    nq = max(1, n // 4)
    write_records(folder / "queries.jsonl", ({"id": f"q{k}", "query": queries[k], "positives": [passages[k]],
                                            "positive_ids": [f"p{k}"]} for k in range(nq)))
    chunk = max(args.batch_size, args.encode_sample // 8)  # the same in every run: the sample splits into shards
    cmd = [sys.executable, "-m", "conan_embed", "-q", "mine", args.model, "--input", folder / "queries.jsonl",
           "--corpus", folder / "corpus.jsonl", "--output", folder / "mined.jsonl", "--top-k",
           min(args.candidates, n // 2), "--batch-size", args.batch_size, "--chunk-size", chunk,
           "--cache-dir", folder / "cache", "--precision", args.precision, "--nproc", nproc]
    if args.device:
        cmd += ["--device", args.device]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=REPO, check=True, env=env)
    return json.loads((folder / "mined.mine.json").read_text()), folder


def step_encode(args, work: Path, passages: list[str], queries: list[str]) -> dict:
    n = args.encode_sample
    half, _ = mine_run(args, work, passages, queries, n // 2, 1)
    one, one_dir = mine_run(args, work, passages, queries, n, 1)
    two, two_dir = mine_run(args, work, passages, queries, n, 2)

    def seconds(s):  # the slowest process's encoding (each process's shards of passages and queries, summed)
        ranks = {}
        for shards in s["processes"]["shards"].values():
            for shard in shards:
                ranks[shard["rank"]] = ranks.get(shard["rank"], 0) + shard["seconds"]
        return max(max(ranks.values()), 1e-3)

    def wall(s):  # rank 0 from its first text to every shard gathered: start-up differences included
        return max(s["timings"]["encode_s"] + s["timings"]["gather_s"], 1e-3)

    equal = all((one_dir / f).read_bytes() == (two_dir / f).read_bytes()
                for f in ("mined.jsonl", "mined.candidates.npy"))
    t = {k: (half["timings"][f"encode_{k}_s"], one["timings"][f"encode_{k}_s"]) for k in ("passage", "query")}
    sizes = {"passage": (n // 2, n), "query": (max(1, n // 8), max(1, n // 4))}
    per = {k: max((t[k][1] - t[k][0]) / max(sizes[k][1] - sizes[k][0], 1), t[k][1] / sizes[k][1] / 2, 1e-6)
           for k in t}
    ratio = seconds(one) / seconds(two)
    hours = (args.target_corpus * per["passage"] + args.target_rows * per["query"]) / 3600
    result = {"encode_passages_per_s": round(1 / per["passage"], 1), "encode_queries_per_s": round(1 / per["query"], 1),
              "encode_growth": round(growth(n // 2, t["passage"][0], n, t["passage"][1]), 2),
              "encode_s_1proc": round(seconds(one), 2), "encode_s_2proc": round(seconds(two), 2),
              "encode_ratio_2proc": round(ratio, 2), "encode_wall_ratio_2proc": round(wall(one) / wall(two), 2),
              "equal_2proc": str(equal).lower(),
              "encode_h_10m": round(hours, 1), "encode_h_10m_2proc": round(hours / ratio, 1)}
    print(f"encode ({args.model}): {result['encode_passages_per_s']} passages/s, "
          f"{result['encode_queries_per_s']} queries/s; 2 processes {ratio:.2f}x, same output: {equal}; "
          f"{args.target_corpus:,} passages + {args.target_rows:,} queries: {hours:.1f} h in one process")
    return result


def model_dim(args) -> int:
    if args.dim:
        return args.dim
    from transformers.utils import logging as hf_logging

    from conan_embed.model_loading import load_embedder

    hf_logging.disable_progress_bar()
    return load_embedder(args.model, device="cpu").get_embedding_dimension()


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


# what each index's time grows with (its cost term), as a function of (queries, corpus size): fitted as
# a + b * term through the two measured corpus sizes, then evaluated at the target sizes. Flat search is fitted
# in both queries and corpus (three measurements: a + b * Q + c * Q * C)
BUILD_TERM = {"flat": lambda c: c, "ivf": lambda c: c, "hnsw": lambda c: c * math.log(c)}
SEARCH_TERM = {"ivf": lambda q, c: q * math.sqrt(c),  # nprobe of nlist = 4 sqrt(C) lists: C / sqrt(C) each
               "hnsw": lambda q, c: q * math.log(c)}


def flat_search_model(Q: int, C: int, t_half_corpus: float, t_full: float, t_half_queries: float):
    """t(q, c) = a + b q + g q c through (Q, C/2), (Q, C), (Q/2, C); coefficients at least 0."""
    g = max(2 * (t_full - t_half_corpus) / (Q * C), 0.0)
    b = max(2 * (t_full - t_half_queries - g * Q * C / 2) / Q, 0.0)
    a = max(t_full - b * Q - g * Q * C, 0.0)
    if g == 0:  # noise: all of it proportional to q c
        return lambda q, c: t_full * q * c / (Q * C)
    return lambda q, c: a + b * q + g * q * c


def step_index(args, dim: int) -> dict:
    import faiss

    from conan_embed.mining import MineConfig
    from conan_embed.mining.offline import build_index, pick_candidates, search

    C, Q, k = args.passages, args.queries, args.candidates
    corpus, queries = unit_vectors(C, dim, 0), unit_vectors(Q, dim, 1)
    result, C2, Q2 = {"dim": dim}, C // 2, Q // 2
    qt, ct = args.target_rows, args.target_corpus
    for kind in args.indexes.split(","):
        config = MineConfig(index=kind)
        small, t_build1 = timed(build_index, corpus[:C2], config)
        index, t_build2 = timed(build_index, corpus, config)
        (_, t1), ((scores, ids), t2) = (timed(search, small, queries, k, show_progress=False),
                                        timed(search, index, queries, k, show_progress=False))
        mb_per_1m = len(faiss.serialize_index(index)) / C * 1e6 / 2**20
        term = BUILD_TERM[kind]
        build_s = linear(term(C2), t_build1, term(C), t_build2, term(ct))
        if kind == "flat":
            _, t3 = timed(search, index, queries[:Q2], k, show_progress=False)
            result["flat_search_growth_queries"] = round(growth(Q2, t3, Q, t2), 2)
            search_s = flat_search_model(Q, C, t1, t2, t3)(qt, ct)
            t = time.perf_counter()
            for row_ids, row_scores in zip(ids, scores):
                pick_candidates(row_ids, row_scores, {int(row_ids[0])}, np.inf, k - 1)
            result["pick_s_1p8m"] = round((time.perf_counter() - t) / Q * qt)
        else:
            term = SEARCH_TERM[kind]
            search_s = linear(term(Q, C2), t1, term(Q, C), t2, term(Q, ct)) * qt / Q
        hours = (search_s + build_s) / 3600
        result.update({f"{kind}_build_s": round(t_build2, 2), f"{kind}_search_s": round(t2, 2),
                       f"{kind}_build_growth": round(growth(C2, t_build1, C, t_build2), 2),
                       f"{kind}_search_growth_corpus": round(growth(C2, t1, C, t2), 2),
                       f"{kind}_mb_per_1m": round(mb_per_1m), f"{kind}_h_1p8m_10m": round(hours, 2),
                       f"{kind}_gb_10m": round(mb_per_1m * ct / 1e6 / 1024, 1)})
        print(f"{kind}: build {t_build1:.2f} s at {C2:,}, {t_build2:.2f} s at {C:,}; search {Q:,} queries for k={k} "
              f"{t1:.2f} s at {C2:,}, {t2:.2f} s at {C:,}; {mb_per_1m:.0f} MB a million passages; {qt:,} queries "
              f"over {ct:,}: build {build_s / 3600:.2f} h + search {search_s / 3600:.2f} h")
        del index, small
    return result


def step_io(args, work: Path, passages: list[str], queries: list[str]) -> dict:
    import hashlib

    from conan_embed.data.records import read_corpus
    from conan_embed.mining.candidate_pool import write_candidate_pool
    from conan_embed.mining.embedding_cache import save_npy
    from conan_embed.training.training_config import TaskConfig
    from conan_embed.training.training_tasks import (_matrix_problem, array_digest, candidate_pool_paths,
                                                     load_candidate_pool, TrainingTask)

    C, Q, K = args.passages, args.queries, args.candidates
    data = work / "io"
    write_records(data / "corpus.jsonl", ({"id": f"p{k}", "text": t} for k, t in enumerate(passages[:C])))
    rng = np.random.default_rng(2)
    matrix = rng.integers(1, C, size=(Q, K), dtype=np.int32)
    matrix.sort(axis=1)  # distinct within a row: drop repeats, pad with -1 at the end
    repeat = np.zeros_like(matrix, dtype=bool)
    repeat[:, 1:] = matrix[:, 1:] == matrix[:, :-1]
    matrix[repeat] = C  # sorts last, then -1
    matrix.sort(axis=1)
    matrix[matrix == C] = -1

    def rows(n):  # row q's positive is passage 0: never a candidate
        return ({"id": f"q{q}", "query": queries[q], "positives": [passages[0]], "positive_ids": ["p0"],
                 "candidates": [f"p{j}" for j in matrix[q] if j >= 0]} for q in range(n))

    out, timing = {}, {}
    for n in (Q // 2, Q):
        path = data / f"rows-{n}.jsonl"
        (_, t_write) = timed(write_records, path, list(rows(n)), "retrieval")
        (_, t_save) = timed(write_candidate_pool, path, matrix[:n], data / "corpus.jsonl", corpus_size=C)
        (pool, t_load) = timed(load_candidate_pool, path, data / "corpus.jsonl", C)
        assert pool is not None and np.array_equal(pool[0], matrix[:n])
        timing[n] = (t_write, t_save, t_load, path.stat().st_size)
    (w1, s1, l1, _), (w2, s2, l2, size) = timing[Q // 2], timing[Q]
    out.update({"jsonl_write_s": round(w2, 2), "io_save_s": round(s2, 2), "io_load_s": round(l2, 2),
                "io_growth": round(growth(Q // 2, s1 + l1, Q, s2 + l2), 2),
                "jsonl_write_s_1p8m": round(linear(Q // 2, w1, Q, w2, args.target_rows))})
    # the matrix at the target size, measured; the file digests projected from the sha256 rate
    big = np.resize(matrix, (args.target_rows, K))
    tmp = data / "big.candidates.npy"
    (_, t_save) = timed(lambda: (save_npy(tmp, big), array_digest(big)))
    meta = {"rows": args.target_rows, "matrix_sha256": array_digest(big)}
    del big
    (_, t_load) = timed(lambda: _matrix_problem(np.load(tmp), meta, C))
    tmp.unlink()
    blob = (data / f"rows-{Q}.jsonl").read_bytes()
    (_, t_hash) = timed(lambda: hashlib.sha256(blob).hexdigest())
    rate = len(blob) / max(t_hash, 1e-9)
    corpus_bytes = (data / "corpus.jsonl").stat().st_size / C * args.target_corpus
    digests = (size / Q * args.target_rows + corpus_bytes) / rate
    out.update({"io_save_s_1p8m": round(t_save + size / Q * args.target_rows / rate, 1),
                "io_load_s_1p8m": round(t_load + digests, 1), "sha256_gb_s": round(rate / 1e9, 2)})
    # a training task's whole load: with the pool (all rows), from the lists (a sample), corpus read subtracted
    _, t_corpus = timed(read_corpus, data / "corpus.jsonl")
    config = TaskConfig(kind="retrieval", file=f"rows-{Q}.jsonl", corpus="corpus.jsonl", batch_size=8)
    task, t_pool = timed(TrainingTask, "retrieval", config, data)
    sample = data / "sample"
    sample.mkdir(exist_ok=True)
    with open(data / f"rows-{Q}.jsonl", "rb") as src, open(sample / "rows.jsonl", "wb") as dst:
        dst.writelines(line for _, line in zip(range(args.io_sample), src))
    (sample / "corpus.jsonl").write_bytes((data / "corpus.jsonl").read_bytes())
    assert not any(p.exists() for p in candidate_pool_paths(sample / "rows.jsonl"))
    listed, t_lists = timed(TrainingTask, "retrieval", TaskConfig(kind="retrieval", file="rows.jsonl",
                                                                   corpus="corpus.jsonl", batch_size=8), sample)
    n_sample = len(listed.rows)
    assert np.array_equal(listed.candidates, task.candidates[:n_sample, :listed.candidates.shape[1]])
    out.update({"task_load_pool_s_1p8m": round(max(t_pool - t_corpus, 0) / Q * args.target_rows),
                "task_load_lists_s_1p8m": round(max(t_lists - t_corpus, 0) / n_sample * args.target_rows)})
    print(f"candidate I/O: {Q:,} rows x {K}: JSONL write {w2:.2f} s, pool save {s2:.2f} s, load {l2:.2f} s; at "
          f"{args.target_rows:,} rows: pool save {out['io_save_s_1p8m']} s, load {out['io_load_s_1p8m']} s (matrix "
          f"measured, digests at {rate / 1e9:.2f} GB/s); JSONL write {out['jsonl_write_s_1p8m']} s; a training task's "
          f"load {out['task_load_pool_s_1p8m']} s with the pool, {out['task_load_lists_s_1p8m']} s from the lists")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=50_000)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--encode-sample", type=int, default=512, help="passages encoded with the model")
    ap.add_argument("--import-rows", type=int, default=20_000)
    ap.add_argument("--io-sample", type=int, default=5_000, help="rows loaded through the old (lists) path")
    ap.add_argument("--io-target-rows", dest="target_rows", type=int, default=1_800_000)
    ap.add_argument("--target-corpus", type=int, default=10_000_000)
    ap.add_argument("--model", default="e5-small")
    ap.add_argument("--dim", type=int, help="vector dim for the index step (default: the model's)")
    ap.add_argument("--device", help="cpu, cuda (default: cuda if available)")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--indexes", default="flat,ivf,hnsw")
    ap.add_argument("--steps", default="import,encode,index,io")
    ap.add_argument("--work", help="folder for the files (default: a temporary one, deleted)")
    args = ap.parse_args()
    steps = args.steps.split(",")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mine-scale-") as tmp:
        work = Path(args.work or tmp)
        passages, queries = synthetic(max(args.passages, args.encode_sample), max(args.queries, args.import_rows))
        result = {"passages": args.passages, "queries": args.queries, "candidates": args.candidates,
                  "model": Path(args.model).name, "device": args.device or "auto"}
        if "import" in steps:
            result.update(step_import(args, work, passages, queries))
        if "encode" in steps:
            result.update(step_encode(args, work, passages, queries))
        if "index" in steps:
            result.update(step_index(args, model_dim(args)))
        if "io" in steps:
            result.update(step_io(args, work, passages, queries))
    result["minutes"] = round((time.perf_counter() - start) / 60, 1)
    print("RESULT mine_scale " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()

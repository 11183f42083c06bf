"""Offline candidate pools: `conan-embed mine` ranks a passage corpus for every retrieval row.

For each row, the corpus is ranked by a model (the teacher, the base or a pre-trained stage) and the
row's top `top_k` ids, without its positives (by id and by identical text), become its `candidates`:
the ranked list that fine-tuning takes its static hard negatives from and dynamic mining walks down.

- Encoding is the cost, so embeddings are cached on disk (conan_embed.mining.embedding_cache) under a key
  made of the model's files, the texts, the prompt, the length cap and the precision, in chunks written
  atomically: an interrupted `mine` continues from its last finished chunk, and mining again with the same
  model (another input file over the same corpus, a re-run) encodes nothing.
- Several processes (`--nproc N`, torchrun) each encode a contiguous shard of the chunks; rank 0 gathers
  them, searches and writes: the same output, byte for byte, as one process.
- faiss searches: exact inner product by default (cosine: embeddings are normalised); IVF or HNSW for
  corpora of millions (`MineConfig.index`).
- Beside the output, the candidates as an int32 matrix of corpus positions (conan_embed.mining.candidate_pool),
  which training loads with numpy.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path

import numpy as np

from conan_embed.data.records import fixed_sample, read_corpus, read_records, write_records
from conan_embed.errors import InputError
from conan_embed.files import write_json
from conan_embed.mining.candidate_pool import pool_matrix, remove_candidate_pool, write_candidate_pool
from conan_embed.mining.embedding_cache import CachedEmbeddings, cache_root
from conan_embed.mining.mining_config import MineConfig, check_mine_config, filters_false_negatives
from conan_embed.mining.rule import false_negative_limit
from conan_embed.model_loading import ModelSource, load_embedder, resolve_model

def read_query_rows(path: str | Path, corpus_index: dict[str, int]) -> list[dict]:
    """The rows to mine for; a positive id that is not in the corpus is an error naming the row."""
    rows = []
    for number, row in enumerate(read_records(path, "retrieval_query"), 1):
        for pid in row.get("positive_ids") or ():
            if str(pid) not in corpus_index:
                raise InputError(f"positive id {str(pid)!r} is not in the corpus", path=path, row=number,
                                 field="positive_ids")
        rows.append(row)
    if not rows:
        raise InputError("no rows to mine for", path=path)
    return rows


def rerank_corpus(rows: list[dict], row_numbers: list[int], corpus_ids: list[str], top: int, path) -> list[int]:
    """Corpus indices (in corpus order) of every row's positives and first `top` input candidates."""
    wanted: set[str] = set()
    for row, number in zip(rows, row_numbers):
        candidates = row.get("candidates")
        if not candidates:
            raise InputError("rerank_top needs every row to have ranked `candidates` (e.g. the shipped TF-IDF "
                             "ones) to re-rank; this row has none", path=path, row=number, field="candidates")
        wanted.update(str(c) for c in candidates[:top])
        wanted.update(str(p) for p in row.get("positive_ids") or ())
    return [i for i, cid in enumerate(corpus_ids) if cid in wanted]


def build_index(corpus: np.ndarray, config: MineConfig):
    """A faiss inner-product index over the corpus embeddings."""
    import faiss

    n, dim = corpus.shape
    if config.index == "flat":
        index = faiss.IndexFlatIP(dim)
    elif config.index == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(40, 2 * config.hnsw_m)
        index.hnsw.efSearch = config.ef_search
    else:
        nlist = max(1, min(config.nlist or int(4 * math.sqrt(n)), n // 39 or 1))  # faiss wants ~39 points a list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(corpus)
        index.nprobe = min(config.nprobe, nlist)
    index.add(corpus)
    return index


def search(index, queries: np.ndarray, k: int, *, chunk: int = 2048, show_progress: bool = True):
    """(scores, corpus indices) of each query's k best, best first; ties by index (deterministic)."""
    from tqdm.auto import tqdm

    scores = np.zeros((len(queries), k), np.float32)
    ids = np.zeros((len(queries), k), np.int64)
    for at in tqdm(range(0, len(queries), chunk), desc="search", unit="chunk", disable=not show_progress):
        d, i = index.search(np.ascontiguousarray(queries[at: at + chunk]), k)
        order = np.lexsort((i, -d), axis=1) if d.size else np.zeros_like(i)
        scores[at: at + len(d)] = np.take_along_axis(d, order, 1)
        ids[at: at + len(d)] = np.take_along_axis(i, order, 1)
    return scores, ids


def exclusions(rows: list[dict], corpus_ids: list[str], corpus_texts: list[str]) -> list[set[int]]:
    """Per row, the corpus indices that are its positives: by id, and every entry with a positive's text."""
    index = {cid: i for i, cid in enumerate(corpus_ids)}
    by_text: dict[str, list[int]] = {}
    for i, text in enumerate(corpus_texts):
        by_text.setdefault(text, []).append(i)
    out = []
    for row in rows:
        excluded = {index[str(p)] for p in row.get("positive_ids") or ()}
        excluded.update(i for text in row["positives"] for i in by_text.get(text, ()))
        out.append(excluded)
    return out


def mine(model, input_path: str | Path, corpus_path: str | Path, output_path: str | Path,
         config: MineConfig | None = None, *, show_progress: bool = True, rank: int = 0, world: int = 1) -> dict | None:
    """Rank `corpus_path` for every row of `input_path` with `model` (a folder, a shipped name or a
    SentenceTransformer) and write the rows with ranked `candidates` to `output_path`, and their candidate
    pool beside it; returns the summary also written beside it (`<output>.mine.json`).

    In several processes (`conan-embed mine --nproc N`, torchrun) every process calls it with its `rank` of
    `world`: each encodes its shard of the texts into the embedding cache, rank 0 gathers them, searches and
    writes (the same output as one process) and the others return None once their shard is encoded."""
    config = check_mine_config(config or MineConfig())
    if not 0 <= rank < world:
        raise InputError(f"rank {rank} is not one of the {world} processes", field="rank")
    start = time.perf_counter()
    corpus_ids, corpus_texts = read_corpus(corpus_path)
    if not corpus_ids:
        raise InputError("the corpus is empty", path=corpus_path)
    rows = read_query_rows(input_path, {cid: i for i, cid in enumerate(corpus_ids)})
    rows_total, corpus_total = len(rows), len(corpus_ids)
    numbers = fixed_sample(len(rows), config.max_rows)
    rows = [rows[i] for i in numbers]
    keep = None  # the corpus positions ranked, when not all of them
    if config.rerank_top is not None:
        keep = rerank_corpus(rows, [i + 1 for i in numbers], corpus_ids, config.rerank_top, input_path)
        corpus_ids, corpus_texts = [corpus_ids[i] for i in keep], [corpus_texts[i] for i in keep]
    excluded = exclusions(rows, corpus_ids, corpus_texts)
    filtering = filters_false_negatives(config)
    st_model, model_key = _embedder(model, config, world)
    caches = {"passage": CachedEmbeddings(st_model, corpus_texts, "passage", config, model_key=model_key),
              "query": CachedEmbeddings(st_model, [r["query"] for r in rows], "query", config, model_key=model_key)}
    outside = [i for i, ex in enumerate(excluded) if not ex] if filtering else []  # positives not in the corpus
    if outside:
        caches["positive"] = CachedEmbeddings(st_model, [t for i in outside for t in rows[i]["positives"]], "passage",
                                              config, model_key=model_key)
    t0 = time.perf_counter()
    shards = {name: cache.encode(rank, world, show_progress=show_progress and rank == 0)
              for name, cache in caches.items()}
    timings = {f"encode_{name}_s": shard["seconds"] for name, shard in shards.items()}
    timings["encode_s"] = round(time.perf_counter() - t0, 2)
    if rank != 0:
        return None
    t0 = time.perf_counter()
    gathered = {name: cache.gather(world) for name, cache in caches.items()}
    timings["gather_s"] = round(time.perf_counter() - t0, 2)
    corpus_emb, query_emb = gathered["passage"][0], gathered["query"][0]
    t0 = time.perf_counter()
    positive = np.full(len(rows), np.nan)
    if filtering:
        positive = positive_scores(rows, excluded, corpus_emb, query_emb, gathered.get("positive", (None,))[0])
    picked, top1 = rank_rows(corpus_emb, query_emb, excluded, positive, config, show_progress=show_progress)
    timings["search_s"] = round(time.perf_counter() - t0, 2)
    short, audit = 0, []
    for number, row, (kept, dropped), pos in zip(numbers, rows, picked, positive):
        # in its place when the input row had candidates (a file mined before holds the same bytes, so runs
        # trained on it still resume), else last (then training reads the rows without the lists)
        row["candidates"] = [corpus_ids[j] for j in kept]
        short += len(kept) < config.top_k
        if dropped:
            audit.append({"row": int(number) + 1, "query": row["query"], "positive_score": round(float(pos), 5),
                          "dropped": [{"id": corpus_ids[j], "score": round(float(sc), 5)} for j, sc in dropped]})
    remove_candidate_pool(output_path)
    write_records(output_path, rows, "retrieval")
    pool = write_candidate_pool(output_path, pool_matrix([kept for kept, _ in picked], config.top_k,
                                                         None if keep is None else np.asarray(keep)),
                                corpus_path, corpus_size=corpus_total,
                                candidates_last=all(next(reversed(row)) == "candidates" for row in rows))
    audit_file = false_negatives_path(output_path)
    if filtering:
        write_records(audit_file, audit)
    else:
        audit_file.unlink(missing_ok=True)
    timings["total_s"] = round(time.perf_counter() - start, 2)
    summary = {"model": str(model) if isinstance(model, (str, Path)) else type(model).__name__,
               "model_fingerprint": model_key, "input": str(input_path), "corpus": str(corpus_path),
               "output": str(output_path), "candidate_pool": str(pool), "rows": len(rows), "rows_total": rows_total,
               "corpus_size": len(corpus_ids), "corpus_total": corpus_total, "rerank_top": config.rerank_top,
               "top_k": config.top_k, "rows_with_fewer": short, "index": config.index,
               "false_negatives": {"relative_margin": config.relative_margin, "absolute_margin": config.absolute_margin,
                                   "dropped": sum(len(a["dropped"]) for a in audit), "rows": len(audit),
                                   "file": str(audit_file) if filtering else None},
               "cache": {"passage": caches["passage"].key, "query": caches["query"].key,
                         "root": str(cache_root(config))},
               "processes": {"count": world, "shards": {name: info["shards"] or [shards[name]]
                                                        for name, (_, info) in gathered.items()},
                             "filled_in": sum(info["filled_in"] for _, info in gathered.values())},
               "mean_top1_score": round(float(top1.mean()), 5), "timings": timings}
    write_json(summary_path(output_path), summary)
    return summary


def rank_rows(corpus_emb: np.ndarray, query_emb: np.ndarray, excluded: list[set[int]], positive: np.ndarray,
              config: MineConfig, *, show_progress: bool = True) -> tuple[list, np.ndarray]:
    """Each row's (kept, dropped) candidates (`pick_candidates`) and its top-1 score, from an index over the
    corpus. Room for the positives the ranking holds and, when filtering, for as many false negatives again;
    rows left short by many false negatives are searched again, deeper."""
    index = build_index(corpus_emb, config)
    limits = false_negative_limit(positive, config.relative_margin, config.absolute_margin)
    n = len(corpus_emb)
    k = min(n, config.top_k * (2 if filters_false_negatives(config) else 1) + max(len(e) for e in excluded))
    todo, picked, top1 = np.arange(len(query_emb)), [None] * len(query_emb), None
    while len(todo):
        scores, ranked = search(index, query_emb[todo], k, show_progress=show_progress)
        top1 = scores[:, 0] if top1 is None else top1
        deeper = []
        for i, ids, row_scores in zip(todo, ranked, scores):
            picked[i] = pick_candidates(ids, row_scores, excluded[i], limits[i], config.top_k)
            if len(picked[i][0]) < config.top_k and k < n:
                deeper.append(i)
        todo, k = np.asarray(deeper, dtype=np.int64), min(n, 4 * k)
    return picked, top1


def _embedder(model, config: MineConfig, world: int):
    """(a loaded model, its fingerprint); with several processes on GPUs, each on its own (LOCAL_RANK)."""
    if not isinstance(model, (str, Path, ModelSource)):
        return model, _state_fingerprint(model)
    import torch

    source = resolve_model(model)
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if world > 1 and device == "cuda":  # one GPU a process; processes share GPUs when there are fewer
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    return load_embedder(source, device=device), source.fingerprint


def pick_candidates(ids, scores, positives: set[int], limit: float, top_k: int):
    """(kept, dropped) from one row's ranking: the first top_k corpus indices that are not its positives and
    score at most `limit`, and the (index, score) of those skipped above the limit on the way."""
    kept, dropped = [], []
    for j, score in zip(ids, scores):
        if j < 0 or j in positives:
            continue
        if score > limit:
            dropped.append((j, score))
            continue
        kept.append(j)
        if len(kept) == top_k:
            break
    return kept, dropped


def positive_scores(rows: list[dict], excluded: list[set[int]], corpus_emb: np.ndarray, query_emb: np.ndarray,
                    outside_emb: np.ndarray | None = None) -> np.ndarray:
    """Each row's best cosine with its positives: from the corpus embeddings where the positives are in the
    corpus (by id or text), else from `outside_emb`, the embeddings of the other rows' positive texts in row
    order."""
    best = np.full(len(rows), -np.inf)
    at = 0
    for i, ex in enumerate(excluded):
        if ex:
            best[i] = float((corpus_emb[sorted(ex)] @ query_emb[i]).max())
        else:
            n = len(rows[i]["positives"])
            best[i] = float((outside_emb[at: at + n] @ query_emb[i]).max())
            at += n
    return best


def summary_path(output_path: str | Path) -> Path:
    output_path = Path(output_path)
    return output_path.with_name(output_path.name.split(".")[0] + ".mine.json")


def false_negatives_path(output_path: str | Path) -> Path:
    """Where `mine` lists the candidates it dropped as likely false negatives, per row, with their scores."""
    output_path = Path(output_path)
    return output_path.with_name(output_path.name.split(".")[0] + ".false_negatives.jsonl")


def _state_fingerprint(model) -> str:
    """A model object's weights, hashed (for models passed in memory rather than as a folder)."""
    digest = hashlib.sha256()
    onnx_file = getattr(model[0].auto_model, "file", None) if getattr(model, "conan_backend", None) else None
    if onnx_file:  # the onnx backend's transformer weights live in the file, not in the state dict
        digest.update(Path(onnx_file).read_bytes())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()

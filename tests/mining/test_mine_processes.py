"""`mine` in several processes: each encodes a contiguous shard of the chunks into the cache, rank 0 gathers
them and writes exactly what one process writes (the rows, the candidate pool, the false-negative list and
every cached chunk, byte for byte)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conan_embed.data.records import write_records
from conan_embed.mining import MineConfig, mine
from conan_embed.mining.embedding_cache import shard_chunks
from conan_embed.training.training_tasks import candidate_pool_paths

OUTPUTS = ("mined.jsonl", "mined.candidates.npy", "mined.false_negatives.jsonl")


@pytest.fixture
def inputs(files, tmp_path):
    """The mining files plus four rows whose positive is in no corpus entry (no positive_ids): their positive
    scores come from the texts, encoded in shards too."""
    queries, corpus_path, rows, _ = files
    extra = [{"id": f"new{i}", "query": r["query"], "positives": ["新的答案：" + r["positives"][0]]}
             for i, r in enumerate(rows[:4])]
    write_records(queries, rows + extra)
    return queries, corpus_path


def config(cache, **kw) -> MineConfig:
    # chunks of 64 texts (8 batches of 8 sorted together): 18 chunks of passages, 1 of queries
    return MineConfig(top_k=20, chunk_size=64, batch_size=8, cache_dir=str(cache), relative_margin=0.0, **kw)


def same_files(a, b) -> None:
    for name in OUTPUTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def same_cache(a, b) -> None:
    chunks = sorted(p.relative_to(a) for p in a.rglob("chunk-*.npy"))
    assert chunks and chunks == sorted(p.relative_to(b) for p in b.rglob("chunk-*.npy"))
    for chunk in chunks:
        assert (a / chunk).read_bytes() == (b / chunk).read_bytes(), chunk


def check_shards(summary: dict, world: int) -> None:
    """Each process encoded its contiguous chunks and nothing was left for rank 0 to fill in."""
    processes = summary["processes"]
    assert processes["count"] == world and processes["filled_in"] == 0
    for kind, shards in processes["shards"].items():
        assert [s["rank"] for s in shards] == list(range(world)), kind
        bounds = [tuple(s["chunks"]) for s in shards]
        assert bounds[0][0] == 0 and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:])), (kind, bounds)
        assert all(s["encoded"] == s["texts"] for s in shards), kind  # a fresh cache: every text encoded once


@pytest.mark.parametrize("chunks", [0, 1, 2, 5, 18, 1000])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_every_chunk_once_in_order(chunks, world):
    shards = [shard_chunks(chunks, r, world) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(chunks))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_ranks_in_turn_write_what_one_process_writes(st_model, inputs, tmp_path):
    """Rank 1 of 2, then rank 0 of 2, in this process: the file-based gather, without a launcher."""
    queries, corpus_path = inputs
    one, two = tmp_path / "one", tmp_path / "two"
    single = mine(str(st_model), queries, corpus_path, one / "mined.jsonl", config(tmp_path / "c1"),
                  show_progress=False)
    assert mine(str(st_model), queries, corpus_path, two / "mined.jsonl", config(tmp_path / "c2"), rank=1, world=2,
                show_progress=False) is None
    assert not (two / "mined.jsonl").exists()
    summary = mine(str(st_model), queries, corpus_path, two / "mined.jsonl", config(tmp_path / "c2"), rank=0, world=2,
                   show_progress=False)
    same_files(one, two)
    same_cache(tmp_path / "c1", tmp_path / "c2")
    check_shards(summary, 2)
    assert set(summary["processes"]["shards"]) == {"passage", "query", "positive"}
    assert single["false_negatives"]["dropped"] > 0 and single["rows_with_fewer"] == 0
    # a re-run in 3 processes reuses the cache: nothing encoded, same output
    for rank in (2, 1, 0):
        again = mine(str(st_model), queries, corpus_path, tmp_path / "three/mined.jsonl", config(tmp_path / "c2"),
                     rank=rank, world=3, show_progress=False)
    assert all(s["encoded"] == 0 for shards in again["processes"]["shards"].values() for s in shards)
    same_files(one, tmp_path / "three")


def test_two_launched_processes_write_what_one_process_writes(st_model, inputs, tmp_path):
    """`conan-embed mine --nproc 2`, as a user starts it: two spawned processes (torchrun's environment)."""
    queries, corpus_path = inputs
    cmd = [sys.executable, "-m", "conan_embed", "mine", str(st_model), "--input", str(queries), "--corpus",
           str(corpus_path), "--output", str(tmp_path / "two/mined.jsonl"), "--top-k", "20", "--chunk-size", "64",
           "--batch-size", "8", "--cache-dir", str(tmp_path / "c2"), "--nproc", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes" in done.stdout and done.stdout.count("wrote ") == 1  # rank 0 alone reports
    mine(str(st_model), queries, corpus_path, tmp_path / "one/mined.jsonl", config(tmp_path / "c1"),
         show_progress=False)
    same_files(tmp_path / "one", tmp_path / "two")
    same_cache(tmp_path / "c1", tmp_path / "c2")
    check_shards(json.loads((tmp_path / "two/mined.mine.json").read_text()), 2)


def test_rerank_pool_holds_positions_in_the_whole_corpus(st_model, train_data, tmp_path):
    """With rerank_top only part of the corpus is ranked; the pool still indexes the corpus file."""
    from conan_embed.data.records import read_corpus, read_records

    summary = mine(str(st_model), train_data / "finetune/retrieval.jsonl", train_data / "finetune/corpus.jsonl",
                   tmp_path / "mined.jsonl", MineConfig(top_k=8, rerank_top=12, cache_dir=str(tmp_path / "c")),
                   show_progress=False)
    assert summary["corpus_size"] < summary["corpus_total"]
    ids, _ = read_corpus(train_data / "finetune/corpus.jsonl")
    matrix = np.load(candidate_pool_paths(tmp_path / "mined.jsonl")[0])
    for row, line in zip(read_records(tmp_path / "mined.jsonl"), matrix):
        assert [ids[j] for j in line if j >= 0] == row["candidates"]

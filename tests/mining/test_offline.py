"""`conan-embed mine`: equals a brute-force ranking, drops positives, caches and resumes its encoding,
and names the file and row of bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conan_embed.data.records import read_records, write_records
from conan_embed.errors import InputError
from conan_embed.mining import MineConfig, mine
from conan_embed.mining.offline import summary_path


def _brute_force(model_path, rows, corpus, k, relative_margin=0.05):
    """Each row's top k ids without its positives and without the candidates that score above
    (1 - relative_margin) x its best positive's score, by numpy; and the scores."""
    from conan_embed.encode import encode_texts
    from conan_embed.model_loading import load_embedder

    model = load_embedder(model_path)
    c = encode_texts(model, [r["text"] for r in corpus], prompt="passage: ", max_length=512, show_progress=False)
    q = encode_texts(model, [r["query"] for r in rows], prompt="query: ", max_length=64, show_progress=False)
    scores = q @ c.T
    out = []
    for row, s in zip(rows, scores):
        positives = {str(p) for p in row["positive_ids"]} | {str(x["id"]) for x in corpus if x["text"] in row["positives"]}
        best = max(s[j] for j, x in enumerate(corpus) if str(x["id"]) in positives)
        limit = np.inf if relative_margin is None else best - relative_margin * abs(best)
        order = np.lexsort((np.arange(len(s)), -s))
        out.append([str(corpus[j]["id"]) for j in order if str(corpus[j]["id"]) not in positives and s[j] <= limit][:k])
    return out, scores


def test_mine_equals_a_brute_force_ranking(st_model, files, tmp_path):
    queries, corpus_path, rows, corpus = files
    config = MineConfig(top_k=30, cache_dir=str(tmp_path / "cache"), chunk_size=100, relative_margin=None)
    summary = mine(st_model, queries, corpus_path, tmp_path / "out/mined.jsonl", config, show_progress=False)
    mined = list(read_records(tmp_path / "out/mined.jsonl", "retrieval"))
    expected, scores = _brute_force(st_model, rows, corpus, 30, relative_margin=None)
    ids = {str(x["id"]): j for j, x in enumerate(corpus)}
    for i, (row, want) in enumerate(zip(mined, expected)):
        assert row["query"] == rows[i]["query"] and len(row["candidates"]) == 30
        if row["candidates"] != want:  # only a near-tie may swap (faiss and numpy sum in other orders)
            got = scores[i, [ids[c] for c in row["candidates"]]]
            np.testing.assert_allclose(got, scores[i, [ids[c] for c in want]], atol=1e-5)
    assert "twin" not in mined[0]["candidates"] and all(
        not set(map(str, r["positive_ids"])) & set(r["candidates"]) for r in mined)
    assert summary["rows"] == len(rows) and json.loads(summary_path(tmp_path / "out/mined.jsonl").read_text())["top_k"] == 30


@pytest.mark.parametrize("margin", [0.003, 0.01])
def test_false_negatives_are_dropped_as_numpy_finds_them(st_model, files, tmp_path, margin):
    """Plant near-copies of each row's positive (a short prefix added) under new ids: they score about as the
    positive does and must be dropped; every other drop and keep agrees with numpy's filter. The random tiny
    model puts every cosine near 0.95, so each query is its positive's text (its positive scores ~0.997, the
    rest of the corpus up to ~0.993) and the margins are small."""
    queries, corpus_path, rows, corpus = files
    rows = [{**r, "query": r["positives"][0]} for r in rows]
    corpus = corpus + [{"id": f"near-{i}", "text": "答：" + r["positives"][0]} for i, r in enumerate(rows)]
    write_records(corpus_path, corpus)
    write_records(queries, rows)
    config = MineConfig(top_k=30, cache_dir=str(tmp_path / "cache"), relative_margin=margin)
    summary = mine(st_model, queries, corpus_path, tmp_path / "mined.jsonl", config, show_progress=False)
    mined = list(read_records(tmp_path / "mined.jsonl", "retrieval"))
    expected, scores = _brute_force(st_model, rows, corpus, 30, relative_margin=margin)
    ids = {str(x["id"]): j for j, x in enumerate(corpus)}
    assert all(len(r["candidates"]) == 30 for r in mined)
    for i, (row, want) in enumerate(zip(mined, expected)):
        assert f"near-{i}" not in row["candidates"]
        if row["candidates"] != want:  # only a near-tie may swap, or sit on the limit
            assert len(row["candidates"]) == len(want)
            got = scores[i, [ids[c] for c in row["candidates"]]]
            np.testing.assert_allclose(got, scores[i, [ids[c] for c in want]], atol=1e-5)
    audit = [json.loads(line) for line in (tmp_path / "mined.false_negatives.jsonl").read_text().splitlines()]
    dropped = {(a["row"], d["id"]) for a in audit for d in a["dropped"]}
    assert {(i + 1, f"near-{i}") for i in range(len(rows))} <= dropped
    fn = summary["false_negatives"]
    assert fn["dropped"] == len(dropped) and fn["rows"] == len(audit) == len(rows) and fn["relative_margin"] == margin
    for a in audit:
        assert all(d["score"] > a["positive_score"] * (1 - margin) - 1e-4 for d in a["dropped"])  # rounded to 1e-5


def test_embeddings_are_cached_and_an_interrupted_encoding_resumes(st_model, files, tmp_path, monkeypatch):
    import conan_embed.encode

    queries, corpus_path, _, corpus = files
    config = MineConfig(top_k=20, cache_dir=str(tmp_path / "cache"), chunk_size=64, batch_size=8, relative_margin=None)
    real, calls = conan_embed.encode.encode_texts, []

    def crashing(*args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed in the middle of the corpus
        return real(*args, **kwargs)

    monkeypatch.setattr(conan_embed.encode, "encode_texts", crashing)
    with pytest.raises(KeyboardInterrupt):
        mine(st_model, queries, corpus_path, tmp_path / "a.jsonl", config, show_progress=False)
    calls.clear()
    monkeypatch.setattr(conan_embed.encode, "encode_texts", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    mine(st_model, queries, corpus_path, tmp_path / "a.jsonl", config, show_progress=False)
    passages = len(corpus)
    assert sum(calls) == passages - 128 + len(list(read_records(queries)))  # 2 finished chunks were reused
    calls.clear()
    mine(st_model, queries, corpus_path, tmp_path / "b.jsonl", config, show_progress=False)
    assert calls == []  # same model, same texts: nothing encoded
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_indexes_find_most_of_the_exact_top(st_model, files, tmp_path, index):
    queries, corpus_path, _, _ = files
    cache = str(tmp_path / "cache")
    mine(st_model, queries, corpus_path, tmp_path / "flat.jsonl",
         MineConfig(top_k=10, cache_dir=cache, relative_margin=None),
         show_progress=False)
    mine(st_model, queries, corpus_path, tmp_path / f"{index}.jsonl",
         MineConfig(top_k=10, cache_dir=cache, index=index, nprobe=8, relative_margin=None), show_progress=False)
    exact = [set(r["candidates"]) for r in read_records(tmp_path / "flat.jsonl")]
    approx = [set(r["candidates"]) for r in read_records(tmp_path / f"{index}.jsonl")]
    recall = np.mean([len(a & e) / len(e) for a, e in zip(approx, exact)])
    assert recall >= 0.8, recall


def test_mined_rows_train(st_model, files, tmp_path, recipe_dict):
    """The output is what finetune reads: its static window is candidates ranked skip_top onwards."""
    from conan_embed.recipe.schema import recipe_from_dict
    from conan_embed.training.training_tasks import load_tasks

    queries, corpus_path, _, _ = files
    mine(st_model, queries, corpus_path, tmp_path / "finetune/mined.jsonl",
         MineConfig(top_k=12, cache_dir=str(tmp_path), relative_margin=None),
         show_progress=False)
    task = recipe_dict["stages"]["finetune"]["tasks"]["retrieval"]
    task.update(file="finetune/mined.jsonl", corpus="corpus.jsonl")
    recipe_dict["stages"]["finetune"]["tasks"] = {"retrieval": task}
    stage = recipe_from_dict(recipe_dict).stages["finetune"]
    loaded = load_tasks(stage.tasks, tmp_path)["retrieval"]
    first = next(read_records(tmp_path / "finetune/mined.jsonl"))
    assert [loaded.corpus_ids[j] for j in loaded.negative_window(0)] == first["candidates"][3:5]


def test_a_row_sample_reranks_its_own_candidates(st_model, train_data, tmp_path):
    """max_rows mines the sample a training task's max_rows takes; rerank_top ranks only the union of the
    rows' positives and first N input candidates (the whole corpus is never encoded)."""
    from conan_embed.data.records import fixed_sample

    rows = list(read_records(train_data / "finetune/retrieval.jsonl"))
    config = MineConfig(top_k=8, max_rows=10, rerank_top=6, cache_dir=str(tmp_path / "cache"), relative_margin=None)
    summary = mine(st_model, train_data / "finetune/retrieval.jsonl", train_data / "finetune/corpus.jsonl",
                   tmp_path / "mined.jsonl", config, show_progress=False)
    picked = [rows[i] for i in fixed_sample(len(rows), 10)]
    mined = list(read_records(tmp_path / "mined.jsonl"))
    assert [r["id"] for r in mined] == [r["id"] for r in picked]
    pool = {str(c) for r in picked for c in r["candidates"][:6]} | {str(p) for r in picked for p in r["positive_ids"]}
    assert summary["corpus_size"] == len(pool) < summary["corpus_total"] and summary["rows_total"] == len(rows)
    assert all(set(r["candidates"]) <= pool and len(r["candidates"]) == 8 for r in mined)
    assert any(r["candidates"] != p["candidates"][:8] for r, p in zip(mined, picked))  # re-ranked by the model
    write_records(tmp_path / "bare.jsonl", [{k: v for k, v in r.items() if k != "candidates"} for r in rows])
    with pytest.raises(InputError, match=r"bare.jsonl, row \d+.*rerank_top needs every row to have ranked `candidates`"):
        mine(st_model, tmp_path / "bare.jsonl", train_data / "finetune/corpus.jsonl", tmp_path / "o.jsonl", config,
             show_progress=False)
    with pytest.raises(InputError, match="max_rows must be > 0"):
        mine(st_model, tmp_path / "bare.jsonl", train_data / "finetune/corpus.jsonl", tmp_path / "o.jsonl",
             MineConfig(max_rows=0), show_progress=False)


def test_bad_input_names_file_and_row(st_model, files, tmp_path):
    queries, corpus_path, rows, corpus = files
    bad = [dict(r) for r in rows]
    bad[4]["positive_ids"] = ["no-such-answer"]
    write_records(tmp_path / "bad.jsonl", bad)
    with pytest.raises(InputError, match=r"bad.jsonl, row 5.*positive id 'no-such-answer' is not in the corpus"):
        mine(st_model, tmp_path / "bad.jsonl", corpus_path, tmp_path / "o.jsonl", show_progress=False)
    bad = [dict(r) for r in rows]
    bad[2]["query"] = "  "
    write_records(tmp_path / "empty.jsonl", bad)
    with pytest.raises(InputError, match=r"empty.jsonl, row 3.*'query' must be a non-empty string"):
        mine(st_model, tmp_path / "empty.jsonl", corpus_path, tmp_path / "o.jsonl", show_progress=False)
    write_records(tmp_path / "dup.jsonl", corpus[:5] + corpus[2:3])
    with pytest.raises(InputError, match=r"dup.jsonl, row 6.*appears twice"):
        mine(st_model, queries, tmp_path / "dup.jsonl", tmp_path / "o.jsonl", show_progress=False)
    with pytest.raises(InputError, match="top_k must be > 0"):
        mine(st_model, queries, corpus_path, tmp_path / "o.jsonl", MineConfig(top_k=0), show_progress=False)
    assert not (tmp_path / "o.jsonl").exists()


def test_cli(st_model, files, tmp_path, capsys):
    from conan_embed.cli import main

    queries, corpus_path, _, _ = files
    out = tmp_path / "cli.jsonl"
    assert main(["mine", str(st_model), "--input", str(queries), "--corpus", str(corpus_path), "--output", str(out),
                 "--top-k", "15", "--cache-dir", str(tmp_path / "c"), "--index", "hnsw",
                 "--relative-margin", "-1"]) == 0
    assert "15 candidates" in capsys.readouterr().out
    assert all(len(r["candidates"]) == 15 for r in read_records(out))
    assert main(["mine", str(st_model), "--input", str(tmp_path / "none.jsonl"), "--corpus", str(corpus_path),
                 "--output", str(out)]) == 2
    assert "none.jsonl" in capsys.readouterr().err


def test_mine_resolves_and_fingerprints_its_model_once(st_model, files, tmp_path, monkeypatch):
    import conan_embed.model_loading as loading

    queries, corpus_path, _, _ = files
    made, hashed = [], []
    real_hash = loading.model_fingerprint

    class CountedSource(loading.ModelSource):
        def __init__(self, location):
            made.append(location)
            super().__init__(location)

    monkeypatch.setattr(loading, "ModelSource", CountedSource)
    monkeypatch.setattr(loading, "model_fingerprint", lambda path: hashed.append(path) or real_hash(path))
    mine(str(st_model), queries, corpus_path, tmp_path / "out.jsonl",
         MineConfig(top_k=5, cache_dir=str(tmp_path / "cache"), relative_margin=None), show_progress=False)
    assert made == [st_model] and hashed == [st_model]

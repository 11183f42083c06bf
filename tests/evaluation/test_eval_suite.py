"""run_suite end to end on the `tiny` size: eval.json, averages, prompts, dim, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from conan_embed.errors import InputError

ALL_TASKS = ["InsuranceQARetrieval", "InsuranceQAReranking", "InsuranceQASTS",
             "InsuranceQAPairClassification", "SnowNLPSentimentClassification", "InsuranceQAClustering"]


def test_eval_json_structure(suite_run, tiny_data):
    result, out, _ = suite_run
    on_disk = json.loads((out / "eval.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert on_disk["size"] == "tiny" and on_disk["dim"] is None and on_disk["embedding_dim"] == 48
    assert on_disk["model_name"] and on_disk["max_seq_length"] == 64
    assert list(on_disk["tasks"]) == ALL_TASKS
    for name, entry in on_disk["tasks"].items():
        assert set(entry) >= {"category", "main_metric", "main_score", "scores", "size", "seconds"}
        assert entry["seconds"] > 0
        assert entry["scores"][entry["main_metric"]] == pytest.approx(entry["main_score"])
        assert entry["size"] == tiny_data.sizes[entry["category"]]
        assert (out / "mteb" / f"{name}.json").is_file()
    mains = {n: e["main_metric"] for n, e in on_disk["tasks"].items()}
    assert mains == {
        "InsuranceQARetrieval": "ndcg_at_10", "InsuranceQAReranking": "map_at_1000",
        "InsuranceQASTS": "cosine_spearman", "InsuranceQAPairClassification": "max_ap",
        "SnowNLPSentimentClassification": "accuracy", "InsuranceQAClustering": "v_measure",
    }
    sizes = on_disk["tasks"]["InsuranceQARetrieval"]["size"]
    assert sizes == {"queries": 24, "documents": 120}
    # the size's repetitions reach mteb: classifier fits and k-means runs, each scored
    mteb_scores = {n: json.loads((out / "mteb" / f"{n}.json").read_text())["scores"]["test"][0]
                   for n in ("SnowNLPSentimentClassification", "InsuranceQAClustering")}
    size = tiny_data.size
    assert len(mteb_scores["SnowNLPSentimentClassification"]["scores_per_experiment"]) == size.classification_experiments
    assert len(mteb_scores["InsuranceQAClustering"]["v_measures"]["Level 0"]) == size.clustering_runs
    table = (out / "eval.txt").read_text()
    assert all(name in table for name in ALL_TASKS) and "Avg (6 datasets)" in table


def test_guard_tasks_reported_apart_from_the_avg(suite_run, tiny_data):
    result, out, _ = suite_run
    guard = result["guard"]
    assert list(guard) == ["PeoplesDailyTitleRetrieval", "PeoplesDailySentenceRetrieval"]
    for name, entry in guard.items():
        assert entry["category"] == "Guard" and entry["main_metric"] == "ndcg_at_10"
        assert 0.0 <= entry["main_score"] <= 1.0 and entry["size"] == tiny_data.sizes[name] == {
            "queries": 16, "documents": 48}
        assert name in (out / "eval.txt").read_text()
    assert "Guard" not in result["categories"] and result["n_datasets"] == 6


def test_scores_in_range_and_averages(suite_run):
    result, _, _ = suite_run
    scores = {n: e["main_score"] for n, e in result["tasks"].items()}
    for name, s in scores.items():
        assert math.isfinite(s)
        low = -1.0 if name == "InsuranceQASTS" else 0.0
        assert low <= s <= 1.0, (name, s)
    assert result["tasks"]["InsuranceQAPairClassification"]["main_score"] >= 0.5  # max over thresholds
    assert result["avg"] == pytest.approx(sum(scores.values()) / len(scores))
    assert result["n_datasets"] == 6
    for entry in result["tasks"].values():
        assert result["categories"][entry["category"]] == pytest.approx(entry["main_score"])


def test_prompts_reach_the_model(suite_run, tiny_data):
    """e5 convention: queries get "query: ", passages "passage: ", every symmetric text "query: "."""
    result, _, rec = suite_run
    d = tiny_data
    assert result["prompts"]["query"] == "query: " and result["prompts"]["STS"] == "query: "
    for q in d.retrieval.queries.values():
        assert rec.seen("query:", q)
    for doc in d.retrieval.corpus.values():
        assert rec.seen("passage:", doc)
        assert not rec.seen("query:", doc)
    for doc in d.reranking.corpus.values():
        assert rec.seen("passage:", doc)
    for p in d.sts.pairs + d.pair_classification.pairs:
        assert rec.seen("query:", p.text1) and rec.seen("query:", p.text2)
    for t, _ in d.classification.test:
        assert rec.seen("query:", t)
    for t in d.clustering.texts:
        assert rec.seen("query:", t)


def test_symmetric_prompt_none_sends_plain_text(tiny_model_dir, tiny_data, recorder_cls):
    from conan_embed.evaluation import run_suite
    from conan_embed.model_loading import load_embedder

    model = load_embedder(tiny_model_dir)
    rec = recorder_cls(model)
    result = run_suite(model, size="tiny", tasks="sts", symmetric_prompt=None, show_progress=False)
    assert list(result["tasks"]) == ["InsuranceQASTS"]
    assert "STS" not in result["prompts"]
    for p in tiny_data.sts.pairs:
        assert any(t.startswith("".join(p.text1.split())[:12]) for t in rec.texts)
    assert not any(t.startswith("query:") for t in rec.texts)


def _cos_rank(q, docs):
    return np.argsort(-(q @ docs.T), axis=1, kind="stable")


def _ndcg_at_10(order, doc_ids, relevant):
    scores = []
    for i, rel in enumerate(relevant):
        gains = [1.0 if doc_ids[j] in rel else 0.0 for j in order[i][:10]]
        dcg = sum(g / math.log2(r + 2) for r, g in enumerate(gains))
        ideal = sum(1 / math.log2(r + 2) for r in range(min(len(rel), 10)))
        scores.append(dcg / ideal)
    return float(np.mean(scores))


def test_dim_truncation_matches_hand_computation(tiny_model_dir, tiny_data, tmp_path):
    """With dim=16, the suite's STS Spearman and retrieval nDCG@10 equal the same numbers computed
    here by hand from the model's truncated, renormalised embeddings (prompts and length cap included)."""
    from conan_embed.evaluation import run_suite
    from conan_embed.model_loading import load_embedder

    result = run_suite(tiny_model_dir, size="tiny", dim=16, tasks=["retrieval", "STS"],
                       output_dir=tmp_path, show_progress=False)
    assert result["dim"] == 16 and result["embedding_dim"] == 16
    assert json.loads((tmp_path / "eval.json").read_text())["dim"] == 16

    model = load_embedder(tiny_model_dir)
    model.max_seq_length = 64

    def emb(texts, prompt):
        e = model.encode(list(texts), prompt=prompt, convert_to_numpy=True)[:, :16]
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    pairs = tiny_data.sts.pairs
    a, b = emb([p.text1 for p in pairs], "query: "), emb([p.text2 for p in pairs], "query: ")
    expected = spearmanr((a * b).sum(1), [p.score for p in pairs]).statistic
    assert result["tasks"]["InsuranceQASTS"]["main_score"] == pytest.approx(expected, abs=1e-4)

    r = tiny_data.retrieval
    q = emb(r.queries.values(), "query: ")
    docs = emb(r.corpus.values(), "passage: ")
    expected = _ndcg_at_10(_cos_rank(q, docs), list(r.corpus), [r.relevant[k] for k in r.queries])
    assert result["tasks"]["InsuranceQARetrieval"]["main_score"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("dim", [0, -3, 49, 2.5])
def test_bad_dim(tiny_model_dir, dim):
    from conan_embed.evaluation import run_suite

    with pytest.raises(InputError, match="dim"):
        run_suite(tiny_model_dir, size="tiny", dim=dim, show_progress=False)


def test_bad_model_and_task_and_size(tiny_model_dir, tmp_path):
    from conan_embed.evaluation import run_suite

    missing = tmp_path / "no-such-model"
    with pytest.raises(InputError, match="no-such-model.*(does not exist|not found)"):
        run_suite(missing, size="tiny", show_progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty.*not a model folder"):
        run_suite(tmp_path / "empty", size="tiny", show_progress=False)
    with pytest.raises(InputError, match="'MSMARCO'"):
        run_suite(tiny_model_dir, size="tiny", tasks=["sts", "MSMARCO"], show_progress=False)
    with pytest.raises(InputError, match="'huge'"):
        run_suite(tiny_model_dir, size="huge", show_progress=False)
    with pytest.raises(InputError, match="batch_size"):
        run_suite(tiny_model_dir, size="tiny", batch_size=0, show_progress=False)


def test_shared_cache_encodes_each_text_once_across_dims(tiny_model_dir):
    from conan_embed.evaluation import run_suite
    from conan_embed.model_loading import load_embedder

    model = load_embedder(tiny_model_dir)
    cache = {}
    full = run_suite(model, size="tiny", tasks="STS,Retrieval", show_progress=False, embedding_cache=cache)
    cut = run_suite(model, size="tiny", tasks="STS,Retrieval", dim=16, show_progress=False, embedding_cache=cache)
    fresh = run_suite(model, size="tiny", tasks="STS,Retrieval", dim=16, show_progress=False)
    assert all(e["texts_encoded"] > 0 for e in full["tasks"].values())
    assert all(e["texts_encoded"] == 0 for e in cut["tasks"].values())
    for name, entry in cut["tasks"].items():
        assert entry["main_score"] == pytest.approx(fresh["tasks"][name]["main_score"], abs=1e-6)


def test_bf16_precision(tiny_model_dir):
    from conan_embed.evaluation import run_suite

    fp32 = run_suite(tiny_model_dir, size="tiny", tasks="STS", show_progress=False)
    bf16 = run_suite(tiny_model_dir, size="tiny", tasks="STS", show_progress=False, precision="bf16")
    assert bf16["precision"] == "bf16"
    assert bf16["avg"] == pytest.approx(fp32["avg"], abs=0.05)
    with pytest.raises(InputError, match="precision"):
        run_suite(tiny_model_dir, size="tiny", tasks="STS", show_progress=False, precision="fp8")


def test_every_matryoshka_dim_in_one_encoding_pass(tiny_model_dir, tmp_path, capsys):
    from conan_embed.cli import main
    from conan_embed.evaluation.dims import parse_dims, run_dims
    from conan_embed.model_loading import load_embedder

    model = load_embedder(tiny_model_dir)
    assert parse_dims("all", model) == [48]  # a folder without conan_embed.json: its output size
    model.conan_matryoshka_dims = (16, 32)  # what load_embedder reads from conan_embed.json
    dims = parse_dims("all", model)
    assert dims == [16, 32, 48]
    results = run_dims(model, "all", tmp_path, size="tiny", tasks="STS,Retrieval", show_progress=False)
    assert list(results) == dims and [r["embedding_dim"] for r in results.values()] == dims
    first, *rest = results.values()
    assert all(e["texts_encoded"] > 0 for e in first["tasks"].values())
    assert all(e["texts_encoded"] == 0 for r in rest for e in r["tasks"].values())  # cut from the cache
    table = (tmp_path / "matryoshka.md").read_text()
    assert "| dim | STS | Retrieval | Avg |" in table or "| dim | Retrieval | STS | Avg |" in table
    for d, r in results.items():
        assert f"| {d} | " in table and f"{100 * r['avg']:.2f} |" in table
        assert (tmp_path / f"dim-{d}" / "eval.json").is_file()
    assert (tmp_path / "matryoshka.png").stat().st_size > 5_000
    assert parse_dims("16, 32", model) == [16, 32]
    for bad in ("16,x", "0", "64", ""):
        with pytest.raises(InputError, match="--dims"):
            parse_dims(bad, model)
    assert main(["eval", str(tiny_model_dir), "--dims", "all", "--dim", "16"]) == 2
    assert "leave out --dim and --baseline" in capsys.readouterr().err


def test_guard_tasks_alone_as_a_quick_forgetting_check(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import conan_embed.evaluation as evaluation
    from conan_embed.cli import main

    suite = evaluation.run_suite
    monkeypatch.setattr(evaluation, "run_suite", lambda model, **kw: suite(model, **{**kw, "size": "tiny"}))
    out = tmp_path / "base"
    assert main(["eval", str(tiny_model_dir), "--tasks", "guard", "--output", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["tasks"] == {} and result["avg"] is None and result["categories"] == {}
    assert list(result["guard"]) == ["PeoplesDailyTitleRetrieval", "PeoplesDailySentenceRetrieval"]
    assert "Avg (0 datasets): n/a" in (out / "eval.txt").read_text()
    capsys.readouterr()
    assert main(["eval", str(tiny_model_dir), "--tasks", "sts,PeoplesDailyTitleRetrieval",
                 "--output", str(tmp_path / "again"), "--baseline", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "forgetting check against" in printed and printed.rstrip().endswith("none")
    again = json.loads((tmp_path / "again" / "eval.json").read_text())
    assert list(again["tasks"]) == ["InsuranceQASTS"] and list(again["guard"]) == ["PeoplesDailyTitleRetrieval"]
    assert again["guard"]["PeoplesDailyTitleRetrieval"]["main_score"] == pytest.approx(
        result["guard"]["PeoplesDailyTitleRetrieval"]["main_score"])

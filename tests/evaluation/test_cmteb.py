"""run_cmteb on tiny stand-ins of C-MTEB's dataset repos (one per category, plus STS22's Chinese subset),
written in the layout mteb v2's loaders read from the hub, read through --data-dir. Also: resume, the
fail-fast error without data, and the arithmetic of both summaries."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conan_embed.errors import InputError

TASKS = ["T2Retrieval", "MMarcoReranking", "LCQMC", "STS22", "Ocnli", "MultilingualSentiment", "CLSClusteringS2S"]


def _repo(name: str) -> str:
    import mteb

    return mteb.get_task(name).metadata.dataset["path"]


def _parquet(folder, rel: str, columns: dict) -> None:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def _retrieval_repo(folder, q: dict, corpus: dict, relevant: dict, top_ranked: dict | None = None) -> None:
    """mteb's retrieval layout: configs corpus / queries / default (qrels) [/ top_ranked], split dev."""
    _parquet(folder, "corpus/dev-00000-of-00001.parquet", {"id": list(corpus), "text": list(corpus.values())})
    _parquet(folder, "queries/dev-00000-of-00001.parquet", {"id": list(q), "text": list(q.values())})
    qrels = [(qid, did) for qid, docs in relevant.items() for did in docs]
    _parquet(folder, "data/dev-00000-of-00001.parquet", {"query-id": [a for a, _ in qrels],
                                                         "corpus-id": [b for _, b in qrels], "score": [1] * len(qrels)})
    configs = {"corpus": "corpus", "default": "data", "queries": "queries"}
    if top_ranked is not None:
        _parquet(folder, "top_ranked/dev-00000-of-00001.parquet",
                 {"query-id": list(top_ranked), "corpus-ids": list(top_ranked.values())})
        configs["top_ranked"] = "top_ranked"
    yaml = "".join(f"- config_name: {name}\n  data_files:\n  - split: dev\n    path: {sub}/dev-*\n"
                   for name, sub in configs.items())
    (folder / "README.md").write_text(f"---\nconfigs:\n{yaml}---\n", encoding="utf-8")


def write_standins(root, d) -> None:
    """A few rows per dataset, from the tiny suite's real texts (which the tiny model's vocabulary covers).
    Repos without a README take their splits from the file names, as the hub's parquet exports do."""
    r = d.retrieval
    queries = dict(list(r.queries.items())[:8])
    _retrieval_repo(root / _repo("T2Retrieval"), queries, r.corpus, {k: r.relevant[k] for k in queries})
    rr = d.reranking
    q = dict(list(rr.queries.items())[:6])
    _retrieval_repo(root / _repo("MMarcoReranking"), q, rr.corpus, {k: rr.relevant[k] for k in q},
                    {k: rr.top_ranked[k] for k in q})
    sts = d.sts.pairs[:24]
    _parquet(root / _repo("LCQMC"), "data/test-00000-of-00001.parquet", {
        "sentence1": [p.text1 for p in sts], "sentence2": [p.text2 for p in sts], "score": [p.score for p in sts]})
    # STS22 loads one table with a `lang` column and splits it by language: only "zh" rows may count
    _parquet(root / _repo("STS22"), "data/test-00000-of-00001.parquet", {
        "lang": ["zh"] * 12 + ["en"] * 12, "sentence1": [p.text1 for p in sts], "sentence2": [p.text2 for p in sts],
        "score": [p.score for p in sts]})
    pairs = d.pair_classification.pairs[:24]
    # the C-MTEB v1 layout: one row holding the whole split as lists
    _parquet(root / _repo("Ocnli"), "data/validation-00000-of-00001.parquet", {
        "sent1": [[p.text1 for p in pairs]], "sent2": [[p.text2 for p in pairs]],
        "labels": [[int(p.score) for p in pairs]]})
    def both_labels(rows, start, n):
        return [x for x in rows if x[1] == 0][start:start + n] + [x for x in rows if x[1] == 1][start:start + n]

    train, test = d.classification.train, d.classification.test
    for split, rows in (("train", both_labels(train, 0, 12)), ("validation", both_labels(test, 0, 8)),
                        ("test", both_labels(test, 8, 12))):
        _parquet(root / _repo("MultilingualSentiment"), f"data/{split}-00000-of-00001.parquet",
                 {"text": [t for t, _ in rows], "label": [y for _, y in rows]})
    c = d.clustering
    _parquet(root / _repo("CLSClusteringS2S"), "data/test-00000-of-00001.parquet", {
        "sentences": [c.texts[:20], c.texts[20:40]], "labels": [c.labels[:20], c.labels[20:40]]})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp("cmteb-data")
    write_standins(root, tiny_data)
    return root


@pytest.fixture(scope="module")
def datasets_cache(tmp_path_factory):
    """`datasets` caches what it prepares: keep that out of ~/.cache during tests."""
    import datasets

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-datasets"))
        yield


class EvaluateSpy:
    """Wraps mteb.evaluate and records which tasks it was asked to run."""

    def __init__(self, mp):
        import mteb

        self.calls: list[str] = []
        self._orig = mteb.evaluate
        mp.setattr(mteb, "evaluate", self)

    def __call__(self, model, task, **kwargs):
        self.calls.append(task.metadata.name)
        return self._orig(model, task, **kwargs)


@pytest.fixture(scope="module")
def first_run(tiny_model_dir, data_dir, datasets_cache, tmp_path_factory):
    from conan_embed.evaluation import run_cmteb

    out = tmp_path_factory.mktemp("cmteb-out")
    with pytest.MonkeyPatch.context() as mp:
        spy = EvaluateSpy(mp)
        result = run_cmteb(tiny_model_dir, tasks=TASKS, data_dir=data_dir, output_dir=out, show_progress=False)
    return result, out, spy.calls


def test_results_per_dataset(first_run):
    result, out, calls = first_run
    assert calls == ["T2Retrieval", "LCQMC", "STS22", "Ocnli", "MultilingualSentiment", "MMarcoReranking",
                     "CLSClusteringS2S"]  # FlagEmbedding's category order
    assert json.loads((out / "eval.json").read_text()) == json.loads(json.dumps(result))
    assert result["suite"] == "cmteb" and result["embedding_dim"] == 48 and result["dim"] is None
    assert result["prompts"]["query"] == "query: " and result["prompts"]["document"] == "passage: "
    tasks = result["tasks"]
    assert set(tasks) == set(TASKS)
    for name, e in tasks.items():
        assert (out / "mteb" / f"{name}.json").is_file() and e["data"] == "data-dir"
        assert 0.0 <= e["legacy"]["score"] <= 1.0 or e["category"] == "STS"
    expected = {  # (legacy split, legacy metric, v2 splits, v2 main metric)
        "T2Retrieval": ("dev", "ndcg_at_10", ["dev"], "ndcg_at_10"),
        "MMarcoReranking": ("dev", "map_at_1000", ["dev"], "map_at_1000"),
        "LCQMC": ("test", "cosine_spearman", ["test"], "cosine_spearman"),
        "Ocnli": ("validation", "cosine_ap", ["validation"], "max_accuracy"),
        "MultilingualSentiment": ("validation", "accuracy", ["validation", "test"], "accuracy"),
        "CLSClusteringS2S": ("test", "v_measure", ["test"], "v_measure"),
    }
    for name, (split, metric, v2_splits, v2_metric) in expected.items():
        e = tasks[name]
        assert (e["legacy"]["split"], e["legacy"]["metric"]) == (split, metric)
        assert list(e["v2"]["splits"]) == v2_splits and e["v2"]["metric"] == v2_metric
        assert e["legacy"]["score"] == pytest.approx(e["scores"][split][metric])
    ms = tasks["MultilingualSentiment"]
    accuracy = {split: ms["scores"][split]["accuracy"] for split in ("validation", "test")}
    assert ms["v2"]["score"] == pytest.approx((accuracy["validation"] + accuracy["test"]) / 2)
    # STS22 is legacy-only, read on its Chinese subset
    assert tasks["STS22"]["v2"] is None and tasks["STS22"]["hf_subset"] == "zh"
    saved = json.loads((out / "mteb" / "STS22.json").read_text())
    assert [row["hf_subset"] for row in saved["scores"]["test"]] == ["zh"]


def test_both_summaries(first_run):
    result, out, _ = first_run
    tasks, lg, v2 = result["tasks"], result["legacy"], result["mteb_v2"]
    legacy = {n: e["legacy"]["score"] for n, e in tasks.items()}
    assert lg["avg"] == pytest.approx(sum(legacy.values()) / 7)
    assert lg["n_datasets"] == 7 and lg["expected_datasets"] == 35 and not lg["complete"]
    assert lg["categories"]["STS"] == pytest.approx((legacy["LCQMC"] + legacy["STS22"]) / 2)
    assert lg["datasets_per_category"] == {"Retrieval": 1, "STS": 2, "PairClassification": 1, "Classification": 1,
                                           "Reranking": 1, "Clustering": 1}
    v2_scores = {n: e["v2"]["score"] for n, e in tasks.items() if e["v2"]}
    assert v2["n_tasks"] == 6 and v2["expected_tasks"] == 31 and not v2["complete"]
    assert v2["mean_task"] == pytest.approx(sum(v2_scores.values()) / 6)
    assert v2["task_types"]["STS"] == pytest.approx(v2_scores["LCQMC"])  # STS22 is not in MTEB(cmn, v1)
    assert v2["mean_task_type"] == pytest.approx(v2["mean_task"])  # one task per type here
    table = (out / "eval.txt").read_text()
    assert "Legacy C-MTEB Avg (mean over datasets): " + f"{100 * lg['avg']:.2f} over 7/35" in table
    assert f"Mean (Task) {100 * v2['mean_task']:.2f}" in table and "MultilingualSentiment" in table


def test_second_call_reruns_nothing_and_an_interrupted_run_continues(first_run, tiny_model_dir, data_dir,
                                                                    datasets_cache, monkeypatch):
    from conan_embed.evaluation import run_cmteb

    result, out, _ = first_run
    spy = EvaluateSpy(monkeypatch)
    again = run_cmteb(tiny_model_dir, tasks=TASKS, data_dir=data_dir, output_dir=out, batch_size=8,
                      show_progress=False)
    assert spy.calls == []
    assert again["legacy"] == result["legacy"] and again["mteb_v2"] == result["mteb_v2"]
    assert {e["data"] for e in again["tasks"].values()} == {"earlier run"}
    # as if the run had stopped before LCQMC and Ocnli finished
    (out / "mteb" / "LCQMC.json").unlink()
    (out / "mteb" / "Ocnli.json").write_text('{"task_name": "Ocnli", "sco')
    resumed = run_cmteb(tiny_model_dir, tasks=TASKS, data_dir=data_dir, output_dir=out, show_progress=False)
    assert spy.calls == ["LCQMC", "Ocnli"]
    assert resumed["legacy"]["avg"] == pytest.approx(result["legacy"]["avg"], abs=1e-6)


def test_model_in_memory_gets_its_prompts_and_resumes(tiny_model_dir, tiny_data, data_dir, datasets_cache,
                                                      recorder_cls, tmp_path, monkeypatch):
    """Queries get the model's "query: ", passages its "passage: ", symmetric texts the symmetric prompt;
    a loaded model is recognised by its parameters on the second call."""
    from conan_embed.evaluation import run_cmteb
    from conan_embed.model_loading import load_embedder

    model = load_embedder(tiny_model_dir)
    rec = recorder_cls(model)
    run_cmteb(model, tasks="T2Retrieval,LCQMC", data_dir=data_dir, output_dir=tmp_path, show_progress=False)
    r = tiny_data.retrieval
    assert all(rec.seen("query:", q) for q in list(r.queries.values())[:8])
    assert all(rec.seen("passage:", doc) and not rec.seen("query:", doc) for doc in r.corpus.values())
    assert all(rec.seen("query:", p.text1) for p in tiny_data.sts.pairs[:24])
    spy = EvaluateSpy(monkeypatch)
    run_cmteb(model, tasks="T2Retrieval,LCQMC", data_dir=data_dir, output_dir=tmp_path, show_progress=False)
    assert spy.calls == []


def test_cli_with_other_settings_discards_earlier_results(first_run, tiny_model_dir, data_dir, datasets_cache,
                                                          tmp_path, monkeypatch, capsys):
    import shutil

    from conan_embed.cli import main

    _, out, _ = first_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    spy = EvaluateSpy(monkeypatch)
    assert main(["eval", str(tiny_model_dir), "--suite", "cmteb", "--tasks", "lcqmc", "--dim", "16",
                 "--data-dir", str(data_dir), "--output", str(copy), "--batch-size", "8"]) == 0
    printed = capsys.readouterr().out
    assert "Legacy C-MTEB Avg (mean over datasets): " in printed and "over 1/35 datasets" in printed
    assert "Mean (TaskType)" in printed and f"wrote {copy / 'eval.json'}" in printed
    assert spy.calls == ["LCQMC"] and json.loads((copy / "eval.json").read_text())["embedding_dim"] == 16
    assert sorted(p.name for p in (copy / "mteb").glob("*.json")) == ["LCQMC.json"]  # no mix of dims
    assert json.loads((copy / "stamp.json").read_text())["dim"] == 16


def test_missing_data_fails_fast_naming_every_dataset(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """No --data-dir content, nothing cached, hub offline: one InputError in seconds, before the model loads."""
    import huggingface_hub.constants
    import mteb  # before the clock starts: the session has imported it anyway

    import conan_embed.evaluation.suite
    import conan_embed.model_loading
    from conan_embed.cli import main
    from conan_embed.evaluation import run_cmteb

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(conan_embed.model_loading, "load_embedder", no_loading)  # the CLI's
    monkeypatch.setattr(conan_embed.evaluation.suite, "load_embedder", no_loading)  # the suite's
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "data").mkdir()
    t0 = time.perf_counter()
    with pytest.raises(InputError) as err:
        run_cmteb(tiny_model_dir, data_dir=tmp_path / "data", output_dir=tmp_path / "out", show_progress=False)
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    assert "missing for 35 of 35 datasets" in msg and "HF_HUB_OFFLINE=1" in msg and "--data-dir" in msg
    for name in ("T2Retrieval", "Ocnli", "MassiveIntentClassification", "STS22", "ThuNewsClusteringP2P"):
        meta = mteb.get_task(name).metadata.dataset
        assert f"{name}: {meta['path']} at revision {meta['revision']}" in msg
        assert f"hf download --repo-type dataset {meta['path']} --revision {meta['revision']}" in msg
    assert "huggingface-cli download --repo-type dataset REPO --revision REV" in msg
    assert not (tmp_path / "out").exists()

    code = main(["eval", str(tiny_model_dir), "--suite", "cmteb", "--tasks", "sts",
                 "--data-dir", str(tmp_path / "data"), "--output", str(tmp_path / "out")])
    stderr = capsys.readouterr().err
    assert code == 2 and "missing for 8 of 8 datasets" in stderr and "Traceback" not in stderr


def test_hf_cache_snapshot_and_unreachable_hub(data_dir, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants

    from conan_embed.evaluation.cmteb_data import hub_unreachable_reason, locate

    repo, rev = _repo("LCQMC"), "17f9b096f80380fce5ed12a9be8be7784b337daf"
    snapshot = tmp_path / "hub" / f"datasets--{repo.replace('/', '--')}" / "snapshots" / rev
    shutil.copytree(data_dir / repo, snapshot)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    found = locate({"LCQMC": (repo, rev)})["LCQMC"]
    assert (found.origin, found.path) == ("hf-cache", snapshot)
    assert locate({"LCQMC": (repo, rev)}, data_dir)["LCQMC"].origin == "data-dir"  # --data-dir comes first
    # not offline by configuration, but nothing answers: one probe, a few seconds at most
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    t0 = time.perf_counter()
    assert "http://127.0.0.1:9 not reachable" in hub_unreachable_reason()
    with pytest.raises(InputError, match="missing for 1 of 1 datasets"):
        locate({"Cmnli": ("C-MTEB/CMNLI", "41bc36f332156f7adc9e38f53777c959b2ae9766")})
    assert time.perf_counter() - t0 < 8


def test_legacy_mean_matches_flagembedding_bge_large_zh_v15():
    """FlagEmbedding's C-MTEB table: bge-large-zh-v1.5 Avg 64.53 with Retrieval 70.46, STS 56.25,
    PairClassification 81.6, Classification 69.13, Reranking 65.84, Clustering 48.99 over 8/8/2/9/4/4 datasets.
    Per-dataset scores spread around those category means give the published Avg: the mean over the 35
    datasets, not over the 6 categories (that would be 65.38)."""
    from conan_embed.evaluation.cmteb_tasks import LEGACY_TASKS, legacy_summary

    published = {"Retrieval": 70.46, "STS": 56.25, "PairClassification": 81.6, "Classification": 69.13,
                 "Reranking": 65.84, "Clustering": 48.99}
    scores = {}
    for category, mean in published.items():
        names = [t.name for t in LEGACY_TASKS if t.category == category]
        spread = [(i - (len(names) - 1) / 2) * 3.0 for i in range(len(names))]  # sums to 0
        scores.update({n: (mean + s) / 100 for n, s in zip(names, spread)})
    summary = legacy_summary(scores)
    assert summary["n_datasets"] == 35 and summary["complete"]
    assert summary["datasets_per_category"] == {"Retrieval": 8, "STS": 8, "PairClassification": 2,
                                                "Classification": 9, "Reranking": 4, "Clustering": 4}
    for category, mean in published.items():
        assert 100 * summary["categories"][category] == pytest.approx(mean)
    # the published category means are rounded to 2 decimals, which moves the weighted mean by < 0.005
    assert abs(100 * summary["avg"] - 64.53) < 0.006
    assert abs(sum(published.values()) / 6 - 64.53) > 0.8


def test_v2_means_and_task_scores_by_hand():
    from conan_embed.evaluation.cmteb_tasks import plan_tasks, task_scores, v2_summary

    types = {"T2Retrieval": "Retrieval", "MMarcoRetrieval": "Retrieval", "LCQMC": "STS", "Ocnli": "PairClassification"}
    s = v2_summary({"T2Retrieval": 0.6, "MMarcoRetrieval": 0.8, "LCQMC": 0.4, "Ocnli": 0.9}, types, 31)
    assert s["mean_task"] == pytest.approx((0.6 + 0.8 + 0.4 + 0.9) / 4)  # 0.675
    assert s["task_types"] == pytest.approx({"Retrieval": 0.7, "STS": 0.4, "PairClassification": 0.9})
    assert s["mean_task_type"] == pytest.approx((0.7 + 0.4 + 0.9) / 3)  # 0.6667
    assert s["n_tasks"] == 4 and not s["complete"]

    (ms,) = plan_tasks(["MultilingualSentiment"])
    row = {"hf_subset": "default"}
    got = task_scores(ms, {"validation": [{**row, "accuracy": 0.7, "main_score": 0.7}],
                           "test": [{**row, "accuracy": 0.8, "main_score": 0.8}]})
    assert got["legacy"] == {"metric": "accuracy", "split": "validation", "score": 0.7}
    assert got["v2"]["score"] == pytest.approx(0.75) and got["v2"]["splits"] == {"validation": 0.7, "test": 0.8}
    (ocnli,) = plan_tasks("ocnli")
    got = task_scores(ocnli, {"validation": [{**row, "cosine_ap": 0.81, "max_ap": 0.86, "max_accuracy": 0.77,
                                              "main_score": 0.77}]})
    assert got["legacy"]["score"] == 0.81 and got["v2"]["score"] == 0.77


def test_task_selection():
    from conan_embed.evaluation.cmteb_tasks import plan_tasks

    assert len(plan_tasks(None)) == 35
    assert [p.name for p in plan_tasks("pairclassification,Waimai")] == ["Ocnli", "Cmnli", "Waimai"]
    assert sum(p.v2_splits is None for p in plan_tasks(None)) == 4
    with pytest.raises(InputError, match="unknown C-MTEB task 'nope'"):
        plan_tasks("retrieval,nope")


def test_recipe_eval_with_the_cmteb_suite(tiny_model_dir, data_dir, datasets_cache, tmp_path):
    """`eval: {suite: cmteb}` in a recipe: run's evaluations, ablation tables and forgetting checks read the
    legacy summary under the local suite's keys."""
    from conan_embed.evaluation.forgetting import regressions, score_columns
    from conan_embed.recipe.schema import recipe_from_dict
    from conan_embed.recipe.recipe_steps import _scores, evaluate_model

    stages = {"s": {"max_steps": 1, "tasks": {"sts": {"kind": "sts", "file": "sts.jsonl", "batch_size": 2,
                                                     "loss": {"name": "cosent"}}}}}
    recipe = recipe_from_dict({"name": "t", "stages": stages,
                               "eval": {"suite": "cmteb", "data_dir": str(data_dir), "dims": [16],
                                        "tasks": ["T2Retrieval", "LCQMC"]}})
    (result,) = evaluate_model("m", tiny_model_dir, recipe, tmp_path, resume=False).values()
    assert result["suite"] == "cmteb" and result["embedding_dim"] == 16
    assert result["avg"] == result["legacy"]["avg"] and result["categories"] == result["legacy"]["categories"]
    assert score_columns(result) == ["Retrieval", "STS", "Avg"] and regressions(result, result) == []
    assert _scores(result)["tasks"]["LCQMC"] == {"category": "STS", "metric": "cosine_spearman",
                                                 "score": result["tasks"]["LCQMC"]["legacy"]["score"],
                                                 "size": {"split": "test"}}
    with pytest.raises(InputError, match="eval.tasks"):
        recipe_from_dict({"name": "t", "stages": stages, "eval": {"suite": "cmteb", "tasks": ["InsuranceQARetrieval"]}})

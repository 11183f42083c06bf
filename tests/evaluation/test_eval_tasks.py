"""The mteb task wiring against oracle encoders (perfect and reversed), the data cuts per size, and
the bookkeeping helpers."""

from __future__ import annotations

import numpy as np
import pytest

from conan_embed.errors import InputError

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _oracle_encoder(tiny_model_dir, data, *, reverse=False):
    """An encoder that knows the answers: query i and every passage relevant to it share direction i;
    other passages point elsewhere. reverse=True makes relevant passages the least similar."""
    from conan_embed.evaluation.encoder import SuiteEncoder
    from conan_embed.model_loading import load_embedder
    from mteb.types import PromptType

    queries = {**data.retrieval.queries, **data.reranking.queries}
    qids = list(queries)
    qtext_to_i = {queries[q]: i for i, q in enumerate(qids)}
    corpus = {**data.retrieval.corpus, **data.reranking.corpus}
    n_extra = len(corpus)
    dim = len(qids) + n_extra

    def doc_vec(k, doc_id):
        v = np.zeros(dim, dtype=np.float32)
        for i, q in enumerate(qids):
            rel = data.retrieval.relevant.get(q) or data.reranking.relevant.get(q) or {}
            if doc_id in rel:
                v[i] = -1.0 if reverse else 1.0
        v[len(qids) + k] = 0.5  # a private direction: distinct, zero similarity to any query
        return v / np.linalg.norm(v)

    doc_vecs = {text: doc_vec(k, d) for k, (d, text) in enumerate(corpus.items())}

    class Oracle(SuiteEncoder):
        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kw):
            texts = [t for batch in inputs for t in batch["text"]]
            if prompt_type == PromptType.query:
                out = np.zeros((len(texts), dim), dtype=np.float32)
                out[np.arange(len(texts)), [qtext_to_i[t] for t in texts]] = 1.0
                return out
            return np.stack([doc_vecs[t] for t in texts])

    return Oracle(load_embedder(tiny_model_dir), show_progress=False)


@pytest.mark.parametrize("category", ["Retrieval", "Reranking"])
def test_oracle_scores_perfect_and_reversed_scores_low(category, tiny_model_dir, tiny_data):
    import mteb

    from conan_embed.evaluation.suite_tasks import build_task

    def main_score(encoder):
        task = build_task(category, tiny_data)
        res = mteb.evaluate(encoder, task, cache=None, co2_tracker=False, show_progress_bar=False,
                            encode_kwargs={"batch_size": 32, "show_progress_bar": False})
        return res.task_results[0].scores["test"][0]["main_score"]

    assert main_score(_oracle_encoder(tiny_model_dir, tiny_data)) == pytest.approx(1.0)
    worst = main_score(_oracle_encoder(tiny_model_dir, tiny_data, reverse=True))
    assert worst < 0.5


def test_quick_size_meets_its_contract(tiny_data):
    from conan_embed.evaluation.data import build_suite_data
    from conan_embed.evaluation.sizes import SIZES

    quick = build_suite_data(SIZES["quick"])
    again = build_suite_data(SIZES["quick"])
    assert quick.retrieval.queries == again.retrieval.queries  # deterministic
    assert list(quick.retrieval.corpus) == list(again.retrieval.corpus)
    r, rr = quick.retrieval, quick.reranking
    assert len(r.queries) >= 300 and len(rr.queries) >= 100
    assert all(d in r.corpus for rel in r.relevant.values() for d in rel)
    # reranking queries and candidates are a subset of retrieval's, so the encoder cache covers them
    assert set(rr.queries) <= set(r.queries) and set(rr.corpus) <= set(r.corpus)
    assert set(quick.clustering.texts) >= set(r.queries.values())
    for q, cands in rr.top_ranked.items():
        assert set(rr.relevant[q]) <= set(cands) and len(cands) > len(rr.relevant[q])
    labels = [y for _, y in quick.classification.test]
    assert len(labels) == SIZES["quick"].classification_test and set(labels) == {0, 1}


def test_full_size_uses_everything():
    from conan_embed.data.splits import evaluation_sets
    from conan_embed.evaluation.data import build_suite_data
    from conan_embed.evaluation.sizes import SIZES

    sets = evaluation_sets()
    full = build_suite_data(SIZES["full"])
    assert len(full.retrieval.corpus) == len(sets.corpus)
    assert len(full.retrieval.queries) == len(full.reranking.queries) == len(sets.questions)
    for q in sets.questions:
        assert len(full.reranking.top_ranked[q.id]) == len(q.answers) + 200
    assert len(full.sts.pairs) == len(sets.sts_pairs)
    assert len(full.classification.test) == len(sets.sentiment_test)
    assert len(full.clustering.texts) == len(sets.questions)


def test_validation_split_shares_no_text_with_test_or_training():
    """`--split valid` scores other texts than test, and the builders hold them out of training."""
    from conan_embed.data.splits import evaluation_sets, evaluation_texts, news_split, sentiment_part
    from conan_embed.evaluation.data import build_suite_data
    from conan_embed.evaluation.sizes import SIZES

    def texts(data):
        out = set(data.retrieval.queries.values()) | set(data.clustering.texts)
        out |= {t for p in data.sts.pairs + data.pair_classification.pairs for t in (p.text1, p.text2)}
        return out | {t for t, _ in data.classification.test}  # both splits' classifiers fit on eval-train texts

    def news(data):
        return {t for g in (data.news_title, data.news_sentence)
                for t in [*g.queries.values(), *(g.corpus[d] for rel in g.relevant.values() for d in rel)]}

    test, valid = build_suite_data(SIZES["quick"]), build_suite_data(SIZES["quick"], split="valid")
    assert test.split == "test" and valid.split == "valid"
    assert not texts(test) & texts(valid) and not news(test) & news(valid)
    assert texts(valid) <= evaluation_texts()  # so no training file holds them (tests/data/test_builders.py)
    held_out = "\n".join(a.headline + "\n" + "".join(a.paragraphs) for a in news_split("valid"))
    assert all(t in held_out for t in news(valid))  # validation articles: held out of training by the builders
    sets = evaluation_sets("valid")
    assert len(sets.sts_pairs) >= 200 and {p.score for p in sets.pair_classification} == {0.0, 1.0}
    assert len(sets.questions) > 1000 and all(q.split == "valid" for q in sets.questions)
    assert {sentiment_part(t) for t, _ in sets.sentiment_train + sets.sentiment_test} == {"eval-train"}
    assert len(valid.news_title.queries) >= 100 and len(valid.classification.test) == SIZES["quick"].classification_test


def test_unknown_split_is_refused():
    from conan_embed.data.splits import evaluation_sets
    from conan_embed.errors import InputError

    with pytest.raises(InputError, match="unknown split 'dev'.*test, valid"):
        evaluation_sets("dev")


def test_avg_is_over_datasets_not_categories():
    from conan_embed.evaluation.suite import summarize

    entries = {
        "A": {"category": "Retrieval", "main_score": 0.2},
        "B": {"category": "Retrieval", "main_score": 0.4},
        "C": {"category": "STS", "main_score": 0.9},
    }
    s = summarize(entries)
    assert s["categories"] == pytest.approx({"Retrieval": 0.3, "STS": 0.9})
    assert s["avg"] == pytest.approx(0.5)  # (0.2 + 0.4 + 0.9) / 3, not (0.3 + 0.9) / 2
    assert s["n_datasets"] == 3


def test_task_names_and_aliases():
    from conan_embed.evaluation.suite import TASK_CATEGORY, resolve_tasks
    from conan_embed.evaluation.suite_tasks import TASK_NAMES

    assert TASK_CATEGORY == TASK_NAMES
    assert resolve_tasks(None) == list(TASK_CATEGORY)
    assert resolve_tasks("sts,retrieval") == ["InsuranceQARetrieval", "InsuranceQASTS"]
    assert resolve_tasks(["pair_classification", "InsuranceQAClustering"]) == [
        "InsuranceQAPairClassification", "InsuranceQAClustering"]
    with pytest.raises(InputError, match="'nope'"):
        resolve_tasks(["nope"])


def test_guard_tasks_selected_by_name():
    from conan_embed.evaluation.suite import GUARD_TASK_NAMES, TASK_CATEGORY, select_tasks
    from conan_embed.evaluation.suite_tasks import GUARD_TASKS

    guards = list(GUARD_TASK_NAMES)
    assert tuple(GUARD_TASKS) == GUARD_TASK_NAMES
    assert select_tasks(None) == (list(TASK_CATEGORY), guards) and select_tasks(None, guard=False)[1] == []
    assert select_tasks("guard") == ([], guards) and select_tasks("sts") == (["InsuranceQASTS"], [])
    assert select_tasks("sts, peoplesdaily_titleretrieval") == (["InsuranceQASTS"], ["PeoplesDailyTitleRetrieval"])
    assert select_tasks("sts", guard=True) == (["InsuranceQASTS"], guards)
    for bad in (",", "guard"):
        with pytest.raises(InputError, match="no task selected"):
            select_tasks(bad, guard=False)
    with pytest.raises(InputError, match="'guard'"):
        select_tasks("sts,gaurd")


def test_suite_prompts():
    from conan_embed.evaluation.encoder import suite_prompts

    e5 = {"query": "query: ", "document": "passage: "}
    p = suite_prompts(e5)
    assert p["STS"] == p["Clustering"] == p["Classification"] == p["PairClassification"] == "query: "
    assert "Retrieval" not in p and p["document"] == "passage: "
    assert suite_prompts(e5, None) == e5
    own = suite_prompts({**e5, "STS": "sts: ", "InsuranceQAClustering": "c: "},
                        task_names=["InsuranceQAClustering"])
    assert own["STS"] == "sts: " and own["InsuranceQAClustering"] == "c: "
    assert suite_prompts({}) == {} and suite_prompts(None) == {}


def test_format_table_handles_partial_results():
    from conan_embed.evaluation import format_table

    result = {"model_name": "m", "size": "quick", "embedding_dim": 8, "max_seq_length": 256,
              "tasks": {"InsuranceQASTS": {"category": "STS", "main_metric": "cosine_spearman",
                                           "main_score": 0.5, "size": {"pairs": 3}, "seconds": 1.0}},
              "categories": {"STS": 0.5}, "avg": 0.5, "n_datasets": 1, "seconds": 1.0}
    table = format_table(result)
    assert "InsuranceQASTS" in table and "50.00" in table and "Avg (1 datasets): 50.00" in table

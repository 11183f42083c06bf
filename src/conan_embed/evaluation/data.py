"""The suite's task data, cut from `evaluation_sets()` for one size (plain Python, no mteb).

Every sample is drawn with a fixed seed from the shipped data, so a size (and split) always selects the
same items. Retrieval, Reranking and Clustering walk one shared permutation of the split's questions. The
Reranking queries are the first Retrieval queries and, as long as `rerank_negatives <=
retrieval_hard_negatives`, every Reranking candidate is in the Retrieval corpus, so the suite's
embedding cache encodes none of them twice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from conan_embed.data.splits import (
    SEED,
    EvaluationSets,
    NewsArticle,
    ScoredPair,
    evaluation_sets,
    first_sentence_and_rest,
    news_split,
)
from conan_embed.evaluation.sizes import SuiteSize


@dataclass
class RetrievalData:
    queries: dict[str, str]  # query id -> text
    corpus: dict[str, str]  # doc id -> text
    relevant: dict[str, dict[str, int]]  # query id -> {doc id: 1}
    top_ranked: dict[str, list[str]] | None = None  # reranking: query id -> candidate doc ids


@dataclass
class PairData:
    pairs: list[ScoredPair]


@dataclass
class ClassificationData:
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    samples_per_label: int
    experiments: int


@dataclass
class ClusteringData:
    texts: list[str]
    labels: list[str]
    runs: int


@dataclass
class SuiteData:
    size: SuiteSize
    split: str
    retrieval: RetrievalData
    reranking: RetrievalData
    sts: PairData
    pair_classification: PairData
    classification: ClassificationData
    clustering: ClusteringData
    news_title: RetrievalData
    news_sentence: RetrievalData
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)


def _take(items: list, n: int | None, rng: random.Random) -> list:
    """A seeded sample of n items in their original order (all of them when n is None or too big)."""
    if n is None or n >= len(items):
        return list(items)
    keep = sorted(rng.sample(range(len(items)), n))
    return [items[i] for i in keep]


def _question_order(sets: EvaluationSets) -> list:
    order = list(sets.questions)
    random.Random(SEED).shuffle(order)
    return order


def retrieval_data(sets: EvaluationSets, size: SuiteSize) -> RetrievalData:
    order = _question_order(sets)
    questions = order if size.retrieval_queries is None else order[: size.retrieval_queries]
    if size.retrieval_corpus is None:
        corpus_ids = list(sets.corpus)
    else:
        must = dict.fromkeys(a for q in questions for a in q.answers)
        must.update(dict.fromkeys(n for q in questions for n in q.negatives[: size.retrieval_hard_negatives]))
        rest = [d for d in sets.corpus if d not in must]
        n_fill = max(0, size.retrieval_corpus - len(must))
        fill = random.Random(SEED + 1).sample(rest, min(n_fill, len(rest)))
        chosen = set(must) | set(fill)
        corpus_ids = [d for d in sets.corpus if d in chosen]  # the collection's own order
    return RetrievalData(
        queries={q.id: q.text for q in questions},
        corpus={d: sets.corpus[d] for d in corpus_ids},
        relevant={q.id: {a: 1 for a in q.answers} for q in questions},
    )


def reranking_data(sets: EvaluationSets, size: SuiteSize) -> RetrievalData:
    order = _question_order(sets)
    questions = order if size.rerank_queries is None else order[: size.rerank_queries]
    top_ranked = {q.id: list(q.answers) + list(q.negatives[: size.rerank_negatives]) for q in questions}
    doc_ids = dict.fromkeys(d for ids in top_ranked.values() for d in ids)
    return RetrievalData(
        queries={q.id: q.text for q in questions},
        corpus={d: sets.corpus[d] for d in doc_ids},
        relevant={q.id: {a: 1 for a in q.answers} for q in questions},
        top_ranked=top_ranked,
    )


def clustering_data(sets: EvaluationSets, size: SuiteSize) -> ClusteringData:
    order = _question_order(sets)
    questions = order if size.clustering_docs is None else order[: size.clustering_docs]
    return ClusteringData(texts=[q.text for q in questions], labels=[q.domain for q in questions],
                          runs=size.clustering_runs)


def classification_data(sets: EvaluationSets, size: SuiteSize) -> ClassificationData:
    test = list(sets.sentiment_test)
    if size.classification_test is not None and size.classification_test < len(test):
        # stratified: each label keeps its share of the test set
        rng = random.Random(SEED + 2)
        by_label: dict[int, list[int]] = {}
        for i, (_, y) in enumerate(test):
            by_label.setdefault(y, []).append(i)
        keep: list[int] = []
        for y in sorted(by_label):
            idx = by_label[y]
            keep += rng.sample(idx, round(size.classification_test * len(idx) / len(test)))
        test = [test[i] for i in sorted(keep)]
    return ClassificationData(
        train=list(sets.sentiment_train), test=test,
        samples_per_label=size.classification_samples_per_label,
        experiments=size.classification_experiments,
    )


def _news_documents(articles: list[NewsArticle], title: bool) -> list[tuple[str, str, str]]:
    """(id, query, document) per held-out item: headline -> the article's opening, or a paragraph's
    first sentence -> the rest of the paragraph."""
    if title:
        return [(f"article-{i}", a.headline, a.opening()) for i, a in enumerate(articles)]
    items = [(f"paragraph-{i}-{j}", *split) for i, a in enumerate(articles) for j, p in enumerate(a.paragraphs)
             if (split := first_sentence_and_rest(p)) is not None]
    return items


def news_guard_data(size: SuiteSize, title: bool, split: str = "test") -> RetrievalData:
    """A general-domain guard task from the split's held-out People's Daily articles (docs/forgetting.md);
    distractors, up to `guard_corpus` documents, are documents of the training articles."""
    held_out = _news_documents(news_split(split), title)
    chosen = _take(held_out, size.guard_queries, random.Random(SEED + 5 + title))
    corpus = {f"doc-{i}": doc for i, _, doc in held_out}
    if size.guard_corpus is not None:
        keep = {f"doc-{i}" for i, _, _ in chosen}
        rest = [d for d in corpus if d not in keep]
        keep |= set(random.Random(SEED + 7).sample(rest, min(len(rest), max(0, size.guard_corpus - len(keep)))))
        others = _news_documents(news_split("train"), title)
        fill = random.Random(SEED + 8).sample(others, min(len(others), max(0, size.guard_corpus - len(keep))))
        corpus = {d: t for d, t in corpus.items() if d in keep} | {f"distractor-{i}": doc for i, _, doc in fill}
    return RetrievalData(queries={i: q for i, q, _ in chosen}, corpus=corpus,
                         relevant={i: {f"doc-{i}": 1} for i, _, _ in chosen})


def build_suite_data(size: SuiteSize, sets: EvaluationSets | None = None, split: str = "test") -> SuiteData:
    sets = sets or evaluation_sets(split)
    split = sets.split
    retrieval = retrieval_data(sets, size)
    reranking = reranking_data(sets, size)
    sts = PairData(_take(list(sets.sts_pairs), size.sts_pairs, random.Random(SEED + 3)))
    pairs = PairData(_take(list(sets.pair_classification), size.pair_classification_pairs,
                           random.Random(SEED + 4)))
    classification = classification_data(sets, size)
    clustering = clustering_data(sets, size)
    news_title, news_sentence = news_guard_data(size, True, split), news_guard_data(size, False, split)
    sizes = {
        "Retrieval": {"queries": len(retrieval.queries), "documents": len(retrieval.corpus)},
        "Reranking": {"queries": len(reranking.queries), "documents": len(reranking.corpus),
                      "candidates": sum(len(v) for v in reranking.top_ranked.values())},
        "STS": {"pairs": len(sts.pairs)},
        "PairClassification": {"pairs": len(pairs.pairs)},
        "Classification": {"train": len(classification.train), "test": len(classification.test),
                           "samples_per_label": classification.samples_per_label,
                           "experiments": classification.experiments},
        "Clustering": {"documents": len(clustering.texts), "clusters": len(set(clustering.labels))},
        "PeoplesDailyTitleRetrieval": {"queries": len(news_title.queries), "documents": len(news_title.corpus)},
        "PeoplesDailySentenceRetrieval": {"queries": len(news_sentence.queries), "documents": len(news_sentence.corpus)},
    }
    return SuiteData(size, split, retrieval, reranking, sts, pairs, classification, clustering, news_title, news_sentence,
                     sizes)

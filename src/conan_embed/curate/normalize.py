"""Text normalisation that is safe for Chinese.

Plain NFKC turns Chinese punctuation into ASCII (，→, ？→? ：→:) in 94 % of the shipped texts, which
changes how Chinese reads and how tokenizers split it; so full-width *punctuation* is kept while
full-width letters and digits (１２３, ＡＢＣ) and the ideographic space become ASCII. Traditional ->
Simplified is off by default: opencc's t2s also rewrites correct Simplified words (覆盖 -> 复盖), so
`t2s: auto` converts only texts where it changes a noticeable share of the Han characters.
"""

from __future__ import annotations

import re
import unicodedata

from conan_embed.curate.curate_config import NormalizeConfig
from conan_embed.curate.stage_interface import Stage
from conan_embed.errors import InputError

# full-width punctuation blocks (！＂＃…／, ：；＜＝＞？＠, ［＼］＾＿｀, ｛｜｝～｟｠｡｢｣､･) and the ellipsis
_KEEP = re.compile("([\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65\u2026]+)")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def nfkc_keep_punctuation(text: str) -> str:
    """NFKC everywhere except full-width punctuation.

    >>> nfkc_keep_punctuation("ＡＢＣ１２３，你好？（对）")
    'ABC123，你好？（对）'
    """
    if text.isascii():
        return text
    parts = _KEEP.split(text)  # odd indexes are the kept punctuation runs
    return "".join(p if i % 2 else unicodedata.normalize("NFKC", p) for i, p in enumerate(parts))


def clean_whitespace(text: str) -> str:
    lines = [_SPACES.sub(" ", line).strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


class TextNormalizer(Stage):
    """Rewrites the query and passage fields in place; a text left empty is rejected (`normalize:empty`)."""

    name = "normalize"

    def __init__(self, config: NormalizeConfig, fields: dict[str, str]):
        super().__init__()
        self.config, self.fields = config, fields
        self._t2s = None
        if config.t2s != "off":
            try:
                import opencc
            except ImportError as exc:
                raise InputError("stages.normalize.t2s needs the `opencc` package: pip install opencc",
                                 field="stages.normalize.t2s") from exc
            self._t2s = opencc.OpenCC("t2s")

    def normalize(self, text: str) -> str:
        c = self.config
        if c.nfkc:
            text = nfkc_keep_punctuation(text) if c.keep_fullwidth_punctuation else unicodedata.normalize("NFKC", text)
        if c.strip_control:
            text = _CONTROL.sub("", text)
        if c.collapse_whitespace:
            text = clean_whitespace(text)
        if self._t2s is not None:
            converted = self._t2s.convert(text)
            if c.t2s == "always":
                text = converted
            else:
                han = len(_HAN.findall(text))
                changed = sum(a != b for a, b in zip(text, converted)) if len(converted) == len(text) else han
                if han and changed >= c.t2s_min_change * han:
                    text = converted
        return text

    def run(self, records):
        records = list(records)
        for r in records:
            if r.reason is not None:
                continue
            self.counters["in"] += 1
            empty = None
            for name, column in self.fields.items():
                value = self.normalize(r.row[column])
                if value != r.row[column]:
                    self.counters[f"changed:{name}"] += 1
                r.row[column] = value
                if not value and empty is None:
                    empty = name
            if empty:
                r.reject(f"{self.name}:empty", f"{empty} is empty after normalisation")
                self.counters["dropped:empty"] += 1
            else:
                self.counters["kept"] += 1
        return records

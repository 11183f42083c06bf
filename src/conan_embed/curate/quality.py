"""Quality: rule-based advert and fluency filters, pluggable classifiers, and an optional classifier
trained from a labelled file."""

from __future__ import annotations

import re
from pathlib import Path

from conan_embed.curate.classifiers import CharNgramClassifier, ClassifierFilter, load_classifiers
from conan_embed.curate.curate_config import QualityConfig

_PHONE = re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)")
_QQ = re.compile(r"(?:QQ|qq|扣扣)\s*[:：号]?\s*\d{5,11}")
_WECHAT = re.compile(r"(?:微信|vx|VX|wx|WX|V信)\s*[:：号]\s*[A-Za-z][-_A-Za-z0-9]{5,19}")
_URL = re.compile(r"(?:https?://|www\.)[!-~]+")  # ASCII only: Chinese text has no spaces to end a URL
_MOJIBAKE = ("锟斤拷", "烫烫烫", "屯屯屯", "\ufffd")
_RUN = re.compile(r"([^\s.\-=_*~·…—])\1{7,}")


def advert_rule(text: str, phrases: list[str]) -> tuple[str, str] | None:
    for pattern, what in ((_PHONE, "phone number"), (_QQ, "QQ number"), (_WECHAT, "WeChat id")):
        if m := pattern.search(text):
            return "advert", f"{what} {m.group(0)!r}"
    for phrase in phrases:
        if phrase in text:
            return "advert", f"phrase {phrase!r}"
    urls = _URL.findall(text)
    if len(urls) >= 3 or (urls and sum(map(len, urls)) > 0.3 * len(text)):
        return "advert", f"{len(urls)} URLs"
    return None


def fluency_rule(text: str) -> tuple[str, str] | None:
    for bad in _MOJIBAKE:
        if bad in text:
            return "mojibake", repr(bad)
    if m := _RUN.search(text):
        return "char_run", f"{m.group(1)!r} x{len(m.group(0))}"
    if len(text) >= 50 and (share := len(set(text)) / len(text)) < 0.1:
        return "low_diversity", f"{share:.2f} distinct characters per character"
    return None


class QualityFilter(ClassifierFilter):
    """Rules: `advert`, `mojibake`, `char_run`, `low_diversity`, `classifier:<name>` (and
    `classifier:trained` for the one fitted from `train.file`)."""

    def __init__(self, config: QualityConfig, fields: dict[str, str], resolve=Path):
        classifiers = load_classifiers(config.classifiers, "stages.quality.classifiers")
        if config.train is not None:
            model = CharNgramClassifier.from_file(config.train, resolve(config.train.file), "stages.quality.train")
            classifiers.append(("trained", model, config.train.threshold))
        super().__init__("quality", classifiers, fields)
        self.config = config

    def check_rules(self, record):
        for name, column in self.fields.items():
            text = record.row[column]
            verdict = (self.config.advert and advert_rule(text, self.config.advert_phrases)) or \
                (self.config.fluency and fluency_rule(text))
            if verdict:
                return verdict[0], f"{name}: {verdict[1]}"
        return None

"""Safety: domain and keyword blocklists from user files, plus pluggable classifiers.

No list ships with conan-embed (we ship none we cannot license); point `domain_blocklist` and
`keyword_blocklist` at your own UTF-8 files, one entry per line, `#` starts a comment. Keywords match as
substrings: Chinese has no word boundaries.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from conan_embed.curate.classifiers import ClassifierFilter, load_classifiers
from conan_embed.curate.curate_config import SafetyConfig
from conan_embed.errors import InputError

_DOMAIN = re.compile(r"(?<![\w.-])((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24})(?![\w-])", re.I)


def read_list(path: str | Path, key: str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{key}: no such file", path=path, field=key)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"{key}: not UTF-8 ({exc.reason} at byte {exc.start})", path=path, field=key) from exc
    return [s for s in (line.split("#", 1)[0].strip() for line in lines) if s]


class KeywordMatcher:
    """Substring search for many keywords: one set lookup per position and distinct keyword length."""

    def __init__(self, keywords: list[str]):
        self.by_length: dict[int, set[str]] = {}
        for k in keywords:
            self.by_length.setdefault(len(k), set()).add(k.lower())

    def find(self, text: str) -> str | None:
        text = text.lower()
        for n, words in self.by_length.items():
            for i in range(len(text) - n + 1):
                if text[i:i + n] in words:
                    return text[i:i + n]
        return None


def domain_blocked(domain: str, blocked: set[str]) -> str | None:
    """The blocklist entry that `domain` or one of its parent domains matches."""
    parts = domain.lower().rstrip(".").split(".")
    for i in range(len(parts) - 1):
        suffix = ".".join(parts[i:])
        if suffix in blocked:
            return suffix
    return None


class SafetyFilter(ClassifierFilter):
    """Rules: `domain` (the row's URL or a domain named in its text), `keyword`, `classifier:<name>`."""

    def __init__(self, config: SafetyConfig, fields: dict[str, str], resolve=Path):
        classifiers = load_classifiers(config.classifiers, "stages.safety.classifiers")
        super().__init__("safety", classifiers, fields)
        self.config = config
        self.domains = {d.lower().lstrip("*.") for d in read_list(resolve(config.domain_blocklist),
                                                                  "stages.safety.domain_blocklist")} \
            if config.domain_blocklist else set()
        self.keywords = KeywordMatcher(read_list(resolve(config.keyword_blocklist), "stages.safety.keyword_blocklist")) \
            if config.keyword_blocklist else None

    def check_rules(self, record):
        if self.domains:
            url = record.row.get(self.config.url_field)
            host = urlsplit(url if "//" in url else f"//{url}").hostname if isinstance(url, str) and url else None
            if host and (hit := domain_blocked(host, self.domains)):
                return "domain", f"{self.config.url_field}: {host} (blocklist: {hit})"
        for name, column in self.fields.items():
            text = record.row[column]
            if self.domains:
                for m in _DOMAIN.finditer(text):
                    if hit := domain_blocked(m.group(1), self.domains):
                        return "domain", f"{name}: {m.group(1)} (blocklist: {hit})"
            if self.keywords is not None and (word := self.keywords.find(text)):
                return "keyword", f"{name}: {word!r}"
        return None

"""Language identification for Chinese pairs.

Letter-based ratios and cld2 reject Chinese questions that name English products (`Obamacare覆盖Medigap？`:
106 shipped pairs with a character ratio; cld2 calls 754 shipped Chinese queries "unknown"). The default
`script` backend therefore counts *Latin words*, not letters: Han / (Han + Latin words + other letters),
plus kana and hangul shares to tell Japanese and Korean apart (measured zh->zh 0.998, en->en 1.000).
`lingua` or `cld2` (optional packages) are consulted only for texts whose Han ratio is below 0.5.
"""

from __future__ import annotations

import re

from conan_embed.curate.curate_config import LanguageConfig
from conan_embed.curate.stage_interface import Filter
from conan_embed.errors import InputError

_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
_KANA = re.compile("[\u3040-\u30ff\u31f0-\u31ff]")
_HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
_LATIN_WORD = re.compile("[A-Za-z]+")
_LETTER = re.compile(r"[^\W\d_]")


def script_profile(text: str) -> tuple[float, float, float]:
    """(Han ratio, kana share, hangul share) of a text; (0, 0, 0) when it has no letters at all.

    >>> round(script_profile("什么是Medicare QMB？")[0], 2)
    0.6
    """
    han, kana, hangul = len(_HAN.findall(text)), len(_KANA.findall(text)), len(_HANGUL.findall(text))
    words = _LATIN_WORD.findall(text)
    latin_words, latin_letters = len(words), sum(map(len, words))
    letters = len(_LETTER.findall(text))
    other = max(letters - han - kana - hangul - latin_letters, 0)
    units = han + kana + hangul + latin_words + other
    if not units:
        return 0.0, 0.0, 0.0
    return han / units, kana / units, hangul / units


class LanguageFilter(Filter):
    """Keeps pairs whose configured fields are Chinese. Rules: `not_zh`, `ja`, `ko`."""

    name = "language"

    def __init__(self, config: LanguageConfig, fields: dict[str, str]):
        super().__init__()
        self.config, self.columns = config, [fields[f] for f in config.fields]
        self._detect = None
        if config.backend == "lingua":
            try:
                from lingua import Language, LanguageDetectorBuilder
            except ImportError as exc:
                raise InputError("stages.language.backend lingua needs `pip install lingua-language-detector`",
                                 field="stages.language.backend") from exc
            detector = LanguageDetectorBuilder.from_languages(
                Language.CHINESE, Language.ENGLISH, Language.JAPANESE, Language.KOREAN).build()
            self._detect = lambda t: getattr(detector.detect_language_of(t), "name", "").lower() == "chinese"
        elif config.backend == "cld2":
            try:
                import pycld2
            except ImportError as exc:
                raise InputError("stages.language.backend cld2 needs `pip install pycld2`",
                                 field="stages.language.backend") from exc

            def detect(t: str) -> bool:
                try:
                    return pycld2.detect(t)[2][0][1].startswith("zh")
                except pycld2.error:
                    return False
            self._detect = detect

    def check(self, record):
        c = self.config
        for column in self.columns:
            text = record.row[column]
            han, kana, hangul = script_profile(text)
            if kana > c.max_kana_share:
                return "ja", f"{column}: kana share {kana:.2f} > {c.max_kana_share}"
            if hangul > c.max_hangul_share:
                return "ko", f"{column}: hangul share {hangul:.2f} > {c.max_hangul_share}"
            if self._detect is not None and han < 0.5:
                if not self._detect(text):
                    return "not_zh", f"{column}: {c.backend} says not Chinese (Han ratio {han:.2f})"
            elif han < c.min_han_ratio:
                return "not_zh", f"{column}: Han ratio {han:.2f} < {c.min_han_ratio}"
        return None

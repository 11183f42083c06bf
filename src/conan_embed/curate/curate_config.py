"""Curation settings: a YAML file (or a recipe's `curate:` section) becomes these dataclasses.

Every stage has its own section with Chinese-aware defaults (measured in docs/design-curation.md §5);
`enabled: false` switches a stage off. Loading is strict, like recipes: an unknown key or a wrong type
raises an InputError naming the dotted key.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from conan_embed.errors import InputError
from conan_embed.typed_config import build_dataclass, set_override

BOILERPLATE_PHRASES = ["关注公众号", "扫码关注", "扫描二维码", "点击这里", "点击查看", "版权所有", "免责声明",
                       "转载请注明", "未经授权", "All rights reserved"]
ADVERT_PHRASES = ["加微信", "加我微信", "微信号", "加QQ", "QQ群", "联系电话", "咨询热线", "免费领取", "限时优惠",
                  "点击购买", "包邮", "代理加盟", "刷单", "优惠券"]


@dataclass
class NormalizeConfig:
    enabled: bool = True
    nfkc: bool = True  # full-width letters/digits and U+3000 -> ASCII ...
    keep_fullwidth_punctuation: bool = True  # ... but Chinese punctuation (，？（）：) stays
    strip_control: bool = True  # control and format characters (U+200B, U+FEFF, ...)
    collapse_whitespace: bool = True  # runs of spaces/tabs -> one space; newlines are kept
    t2s: Literal["off", "auto", "always"] = "off"  # Traditional -> Simplified (needs `opencc`)
    t2s_min_change: float = 0.05  # auto: convert a text when t2s changes this share of its Han characters


@dataclass
class LanguageConfig:
    enabled: bool = True
    lang: Literal["zh"] = "zh"
    backend: Literal["script", "lingua", "cld2"] = "script"
    min_han_ratio: float = 0.3  # Han characters / (Han + Latin words + other-script letters)
    max_kana_share: float = 0.1  # of the letters: Japanese
    max_hangul_share: float = 0.1  # of the letters: Korean
    fields: list[str] = field(default_factory=lambda: ["query", "passage"])


@dataclass
class HeuristicsConfig:
    enabled: bool = True
    query_chars: list[int] = field(default_factory=lambda: [2, 512])
    passage_chars: list[int] = field(default_factory=lambda: [10, 8192])
    ratio_min_chars: int = 20  # digit and symbol ratios say little about shorter texts ("401K到期吗？")
    max_digit_ratio: float = 0.45  # finance answers reach 0.4 ("2019年的上限是19500美元，50岁以上可多缴6000美元")
    max_symbol_ratio: float = 0.3
    max_duplicate_line_share: float = 0.3  # for texts of more than 3 lines
    repeated_ngram: int = 10
    # characters inside repeated n-grams, for texts >= 100 chars (0.3 hit answers that name an English
    # product three times: "Medicare Part D")
    max_repeated_ngram_share: float = 0.5
    boilerplate: list[str] = field(default_factory=lambda: list(BOILERPLATE_PHRASES))


@dataclass
class ClassifierConfig:
    """A pluggable classifier: `module:Class` built with `options`, whose `predict(texts)` gives P(bad)."""
    name: str
    threshold: float = 0.5
    options: dict = field(default_factory=dict)


@dataclass
class SafetyConfig:
    enabled: bool = True
    domain_blocklist: str | None = None  # a UTF-8 file, one domain per line ('#' comments)
    keyword_blocklist: str | None = None  # a UTF-8 file, one keyword or phrase per line
    url_field: str = "url"  # a row field holding the page's URL, checked when present
    classifiers: list[ClassifierConfig] = field(default_factory=list)


@dataclass
class TrainedClassifierConfig:
    """Fit a character n-gram linear classifier (scikit-learn) on a labelled file, then apply it."""
    file: str  # JSONL / Parquet / CSV rows with a text and a 0/1 label (1 = bad)
    text_field: str = "text"
    label_field: str = "label"
    threshold: float = 0.5


@dataclass
class QualityConfig:
    enabled: bool = True
    advert: bool = True  # phone / QQ / WeChat patterns, promotion phrases, URL density
    advert_phrases: list[str] = field(default_factory=lambda: list(ADVERT_PHRASES))
    fluency: bool = True  # mojibake, long runs of one character, too few distinct characters
    classifiers: list[ClassifierConfig] = field(default_factory=list)
    train: TrainedClassifierConfig | None = None


@dataclass
class DedupConfig:
    enabled: bool = True
    key: Literal["pair", "passage", "query"] = "pair"  # what two rows must share to be duplicates
    exact: bool = True  # identical keys first (after normalisation)
    near: bool = True  # then MinHash LSH
    ngram: int = 5  # InternLM2: character 5-grams, 128 permutations, Jaccard 0.7
    num_perm: int = 128
    threshold: float = 0.7
    weights: list[float] = field(default_factory=lambda: [0.2, 0.8])  # false-positive, false-negative
    bands: int | None = None  # both or neither: overrides the (bands, rows) derived from the threshold
    rows: int | None = None
    verify: Literal["exact", "signature", "none"] = "exact"  # check each candidate pair's Jaccard
    seed: int = 1


@dataclass
class SampleConfig:
    """A seeded subsample of the survivors (a budget), stratified by a field, before the teacher."""
    size: int | None = None  # None: keep all
    by: str | None = "source"
    seed: int = 42
    # "proportional": each group in proportion to its rows; "equal": the same count per group, as far as
    # each group has rows (a small general-domain source is not drowned by a large in-domain one)
    shares: Literal["proportional", "equal"] = "proportional"


@dataclass
class TeacherConfig:
    enabled: bool = True
    model: str = "e5-small"  # a shipped model name, a folder or a hub id (paper: BAAI/bge-large-zh-v1.5)
    threshold: float | None = None  # drop pairs whose cosine is below (paper: 0.4 with bge-large-zh)
    percentile: float | None = 11.0  # drop the lowest-scoring share (11: keep the paper's 89 %)
    max_length: dict[str, int] = field(default_factory=lambda: {"query": 64, "passage": 64})
    prompts: dict[str, str] | None = None  # None: the model's own prompts (e5: "query: ", "passage: ")
    precision: Literal["fp32", "bf16"] = "fp32"
    batch_size: int = 64
    device: str | None = None  # None: cuda when there is one
    backend: Literal["torch", "onnx"] = "torch"  # onnx: the folder's export (conan-embed export; docs/serving.md)
    onnx_file: str | None = None  # which export (default onnx/model.onnx)


@dataclass
class StagesConfig:
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    heuristics: HeuristicsConfig = field(default_factory=HeuristicsConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)


@dataclass
class ExecutorConfig:
    name: Literal["local", "ray"] = "local"
    workers: int | None = None  # local: processes for the CPU stages (None: all cores, 1: in-process)
    address: str | None = None  # ray: a cluster address; None starts a local one
    teacher_actors: int = 1  # ray: teacher model replicas
    teacher_gpus: float = 0  # ray: GPUs per teacher actor
    teacher_cpus: float = 1  # ray: CPUs (and torch threads) per teacher actor; raise it for CPU-only teachers


@dataclass
class CurateConfig:
    fields: dict[str, str] = field(default_factory=lambda: {"query": "query", "passage": "passage"})
    shard_rows: int = 50_000  # unit of resume and of parallelism
    output_format: Literal["jsonl", "parquet"] = "jsonl"
    stages: StagesConfig = field(default_factory=StagesConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    source: str | None = None  # the file it was loaded from: relative paths in it resolve there

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() or self.source is None else Path(self.source).parent / p


@dataclass
class RecipeCurateConfig(CurateConfig):
    """A recipe's `curate:` section: the settings above plus where the raw and curated data live
    (relative to the recipe's data.dir)."""
    input: list[str] = field(default_factory=lambda: ["pretrain/weak_pairs.jsonl"])
    output: str = "curated"


def check_curate_config(cfg: CurateConfig, prefix: str = "") -> CurateConfig:
    """Value checks the types can't express; errors name `prefix` + the dotted key."""
    src = cfg.source

    def fail(key: str, msg: str):
        raise InputError(f"{prefix}{key}: {msg}", path=src, field=f"{prefix}{key}")

    if set(cfg.fields) != {"query", "passage"}:
        fail("fields", f"maps exactly 'query' and 'passage' to your column names, got {sorted(cfg.fields)}")
    if cfg.shard_rows < 1:
        fail("shard_rows", f"must be >= 1, got {cfg.shard_rows}")
    st = cfg.stages
    for key, pair in (("stages.heuristics.query_chars", st.heuristics.query_chars),
                      ("stages.heuristics.passage_chars", st.heuristics.passage_chars)):
        if len(pair) != 2 or not 0 <= pair[0] <= pair[1]:
            fail(key, f"is [min, max] characters with 0 <= min <= max, got {pair}")
    for name in st.language.fields:
        if name not in ("query", "passage"):
            fail("stages.language.fields", f"lists 'query' and/or 'passage', got {name!r}")
    d = st.dedup
    if not 0 < d.threshold < 1:
        fail("stages.dedup.threshold", f"must be in (0, 1), got {d.threshold}")
    if d.ngram < 1 or d.num_perm < 2:
        fail("stages.dedup", f"ngram >= 1 and num_perm >= 2, got {d.ngram} and {d.num_perm}")
    if (d.bands is None) != (d.rows is None):
        fail("stages.dedup.bands", "set both bands and rows, or neither")
    if d.bands is not None and (d.bands < 1 or d.rows < 1 or d.bands * d.rows > d.num_perm):
        fail("stages.dedup.bands", f"bands * rows must be <= num_perm ({d.num_perm}), got {d.bands} x {d.rows}")
    if len(d.weights) != 2 or min(d.weights) < 0 or sum(d.weights) <= 0:
        fail("stages.dedup.weights", f"is [false-positive weight, false-negative weight], got {d.weights}")
    if st.sample.size is not None and st.sample.size < 1:
        fail("stages.sample.size", f"must be >= 1, got {st.sample.size}")
    t = st.teacher
    if t.percentile is not None and not 0 <= t.percentile < 100:
        fail("stages.teacher.percentile", f"must be in [0, 100), got {t.percentile}")
    if t.threshold is not None and not -1 <= t.threshold <= 1:
        fail("stages.teacher.threshold", f"is a cosine in [-1, 1], got {t.threshold}")
    for name in t.max_length:
        if name not in ("query", "passage"):
            fail(f"stages.teacher.max_length.{name}", "known keys: query, passage")
    if cfg.executor.workers is not None and cfg.executor.workers < 1:
        fail("executor.workers", f"must be >= 1, got {cfg.executor.workers}")
    return cfg


def curate_config_from_dict(data: dict | None, source=None, prefix: str = "") -> CurateConfig:
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise InputError(f"a curation config is a mapping, got {type(data).__name__}", path=source)
    cfg = build_dataclass(CurateConfig, data, prefix, source)
    cfg.source = str(source) if source is not None else None
    return check_curate_config(cfg)


def load_curate_config(path: str | Path | None = None, overrides: list[str] = ()) -> CurateConfig:
    """The defaults, or a YAML file's settings; `overrides` are `dotted.key=value` strings."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError("no such curation config file", path=path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"not valid YAML: {exc}", path=path) from exc
    data = copy.deepcopy(data)
    for assignment in overrides:
        set_override(data, assignment, source=path)
    return curate_config_from_dict(data, source=path)

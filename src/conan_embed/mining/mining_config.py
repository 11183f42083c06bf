"""Settings of offline candidate mining (`conan-embed mine`, the recipe's `mine:` step) and of dynamic hard
negative mining while a stage trains (a stage's `mining:` section)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from conan_embed.errors import InputError


@dataclass
class MineConfig:
    top_k: int = 200  # candidate ids written per row, best first, positives excluded
    # flat = exact inner product, 4·dim bytes a passage; ivf: the same plus centroids, searches nprobe/nlist of
    # the corpus; hnsw: + ~2·M·4 bytes of links a passage (docs/mining.md, "Mining across processes")
    index: Literal["flat", "ivf", "hnsw"] = "flat"
    nlist: int | None = None  # ivf: inverted lists (None: 4·√corpus size)
    nprobe: int = 32  # ivf: lists searched per query
    hnsw_m: int = 32  # hnsw: links per node
    ef_search: int = 256  # hnsw: search breadth
    batch_size: int = 64  # texts per forward pass
    max_length: dict[str, int] = field(default_factory=lambda: {"query": 64, "passage": 512})
    precision: Literal["fp32", "bf16"] = "fp32"
    # texts per cached chunk of embeddings: the unit of resumption and of the shards that processes encode (a
    # multiple of batch_size x 8 keeps a text's embedding the same whatever the chunk size)
    chunk_size: int = 1024
    cache_dir: str | None = None  # embeddings cache (None: <conan-embed cache>/embeddings)
    device: str | None = None  # None: cuda when available
    # A smaller job for small machines: mine only a fixed random sample of the rows (the same sample a
    # training task's `max_rows` takes), and/or rank only the union of those rows' positives and their
    # first `rerank_top` input candidates (re-rank an existing ranking, e.g. the shipped TF-IDF one)
    # instead of the whole corpus.
    max_rows: int | None = None
    rerank_top: int | None = None
    # false negatives: drop a candidate scoring above (1 - relative_margin) x the row's best positive or within
    # absolute_margin of it; None: that test is off. 0: above the positive itself. NV-Retriever's 95 % (0.05)
    # drops a median of 347 of 2,379 candidates a row with e5-small, whose cosines sit in a narrow band
    # (docs/mining.md): right for a model whose scores spread, not as a default
    relative_margin: float | None = 0.0
    absolute_margin: float | None = None


@dataclass
class RecipeMineConfig(MineConfig):
    """The recipe's `mine:` step: rank `corpus` for the rows of `input` with `model` and write `output`
    (all relative to data.dir), after the stage named by `model` (or before the first stage)."""

    model: str = "model"  # "model" (the recipe's base), a stage name, or a model folder / shipped name
    input: str = "finetune/retrieval.jsonl"
    corpus: str = "finetune/corpus.jsonl"
    output: str = "mined/retrieval.jsonl"


def check_mine_config(config: MineConfig, prefix: str = "", source=None) -> MineConfig:
    for key in ("top_k", "nprobe", "hnsw_m", "ef_search", "batch_size", "chunk_size", "max_rows", "rerank_top"):
        value = getattr(config, key)
        if value is not None and value <= 0:
            raise InputError(f"{prefix}{key} must be > 0, got {value}", path=source, field=f"{prefix}{key}")
    if config.nlist is not None and config.nlist <= 0:
        raise InputError(f"{prefix}nlist must be > 0, got {config.nlist}", path=source, field=f"{prefix}nlist")
    check_margins(config, prefix.rstrip("."), source)
    for name, cap in config.max_length.items():
        if name not in ("query", "passage") or cap <= 0:
            raise InputError(f"{prefix}max_length.{name}: expected query/passage caps > 0, got {cap}", path=source,
                             field=f"{prefix}max_length.{name}")
    return config


def filters_false_negatives(config) -> bool:
    """Whether a mine or mining config drops likely false negatives (either margin set)."""
    return config.relative_margin is not None or config.absolute_margin is not None


def check_margins(config, key: str, source=None) -> None:
    """relative_margin in [0, 1) and absolute_margin >= 0 (or None) on a mining or mine config."""
    prefix = f"{key}." if key else ""
    rel, absolute = config.relative_margin, config.absolute_margin
    if rel is not None and not 0 <= rel < 1:
        raise InputError(f"{prefix}relative_margin must be in [0, 1) (0.05 keeps candidates below 95 % of the "
                         f"positive's score), got {rel}", path=source, field=f"{prefix}relative_margin")
    if absolute is not None and not absolute >= 0:
        raise InputError(f"{prefix}absolute_margin must be >= 0, got {absolute}", path=source,
                         field=f"{prefix}absolute_margin")


@dataclass
class MiningConfig:
    """Dynamic hard-negative mining (docs/mining.md). Defaults are the paper's constants."""

    mode: Literal["static", "dynamic"] = "static"
    check_every: int = 100  # steps between checks (Conan-embedding-v2: 1)
    # paper: the score rule below. loss-weight (ours, scale-free): exhausted when the set's weight in the
    # InfoNCE denominator relative to the positive, exp((S_now - S_positive) / temperature), fell by
    # `weight_drop` since the set was assigned (its margin to the positive grew by temperature * ln weight_drop)
    rule: Literal["paper", "loss-weight"] = "paper"
    ratio: float = 1.15  # paper: exhausted when ratio * S_now < S_initial ...
    max_score: float = 0.8  # ... and |S_now| < max_score
    absolute: bool = True  # compare |S_now| (v1); false: S_now itself (v2)
    min_initial: float | None = None  # also exhausted when S_initial < this (v2: 0.4)
    weight_drop: float = 2.0  # loss-weight: the factor by which the set's weight must fall
    # false negatives: a replacement skips candidates scoring above (1 - relative_margin) x the row's positive
    # (0.05: NV-Retriever's 95 %) or within absolute_margin of it, by the model as it trains (one no-grad pass
    # over the replaced rows). None: off (`mine` filters the candidate lists already, by default)
    relative_margin: float | None = None
    absolute_margin: float | None = None
    initial_score: Literal["first_seen", "forward"] = "first_seen"  # how S_initial of new negatives is measured
    tasks: list[str] | None = None  # None: every retrieval task whose rows name candidate ids
    batch_size: int = 64  # queries per forward pass when measuring S_initial

    @property
    def filters_false_negatives(self) -> bool:
        return filters_false_negatives(self)

"""The optional sample budget as curation steps: the quotas over all shards (driver), then a seeded,
stratified sample per shard. Each shard's draw depends only on the seed and the shard's index, so the
result does not depend on the executor or on which shards a re-run redoes."""

from __future__ import annotations

import numpy as np

from conan_embed.curate.curate_config import SampleConfig
from conan_embed.curate.curation_record import Record
from conan_embed.curate.curation_steps import GlobalStep, ShardStep, WorkArea
from conan_embed.curate.io import Shard


class SampleQuotas(GlobalStep):
    """Each shard's share of the budget, in proportion to the rows `source` left it (largest remainder);
    None for all when the budget covers every row."""

    name = "sample-quotas"
    timing = "teacher"

    def __init__(self, work: WorkArea, config: SampleConfig, source: str):
        super().__init__(work)
        self.config, self.source = config, source

    def run(self) -> dict:
        survivors = {s.name: self.work.done(self.source, s.name)["kept"] for s in self.work.shards}
        size, total = self.config.size, sum(survivors.values())
        if size is None or size >= total:
            return {"quotas": {k: None for k in survivors}}
        return {"quotas": _apportion(survivors, size)}


class SampleRows(ShardStep):
    """Per shard: all but the shard's quota marked `sample:budget` (`rejected/<shard>-sample.*`)."""

    name = "sample"
    timing = "teacher"
    rejects = "sample"

    def __init__(self, work: WorkArea, config: SampleConfig, source: str):
        super().__init__(work)
        self.config, self.source = config, source

    def items(self) -> dict:
        quotas = self.work.done(SampleQuotas.name)["quotas"]
        return {s.name: (s, quotas[s.name]) for s in self.work.shards}

    def run(self, job: tuple[Shard, int | None]) -> dict:
        shard, quota = job
        records = sample(self.work.read_rows(self.source, shard), quota, shard.index, self.config)
        return self.pass_on(shard, records)


def sample(records: list[Record], quota: int | None, shard_index: int, cfg: SampleConfig) -> list[Record]:
    """Marks all but `quota` live records `sample:budget`, stratified by `cfg.by`, seeded by the seed
    and the shard."""
    live = [r for r in records if r.reason is None]
    if quota is None or quota >= len(live):
        return records
    rng = np.random.default_rng([cfg.seed, shard_index])
    groups: dict[str, list[Record]] = {}
    for r in live:
        groups.setdefault(str(r.row.get(cfg.by)) if cfg.by else "", []).append(r)
    sizes = {g: len(members) for g, members in groups.items()}
    take = _equal_shares(sizes, quota) if cfg.shares == "equal" else _apportion(sizes, quota)
    for g in sorted(groups):
        members = groups[g]
        chosen = set(rng.choice(len(members), size=take[g], replace=False).tolist())
        for k, r in enumerate(members):
            if k not in chosen:
                r.reject("sample:budget", f"budget {cfg.size}, by {cfg.by or 'nothing'}")
    return records


def _apportion(sizes: dict, total: int) -> dict:
    """`total` split over the keys in proportion to `sizes`, in integers (largest remainder, ties by key)."""
    whole = sum(sizes.values())
    exact = {k: total * n / whole for k, n in sizes.items()}
    share = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (-(exact[k] - share[k]), k))[:total - sum(share.values())]:
        share[k] += 1
    return share


def _equal_shares(sizes: dict, total: int) -> dict:
    """`total` split evenly over the keys, none above its size: what a small key cannot take goes to
    the others (smallest keys first, so the rounding remainder lands on the largest).

    >>> _equal_shares({"a": 10, "b": 100, "c": 100}, 101)
    {'a': 10, 'b': 45, 'c': 46}
    """
    share, left = {}, min(total, sum(sizes.values()))
    order = sorted(sizes, key=lambda k: (sizes[k], k))
    for i, k in enumerate(order):
        share[k] = min(sizes[k], left // (len(order) - i))
        left -= share[k]
    return {k: share[k] for k in sizes}

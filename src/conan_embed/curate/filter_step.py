"""The first curation step: read a shard and run the row stages over it (stage_interface.py)."""

from __future__ import annotations

from collections import Counter

from conan_embed.curate.curation_steps import ShardStep, WorkArea
from conan_embed.curate.io import Shard, read_shard


class FilterRows(ShardStep):
    """read -> normalize -> language -> heuristics -> safety -> quality, per shard: the survivors go to
    `work/filter/`, the rest to `rejected/<shard>-a.*`; the marker counts rows and each stage's counters."""

    name = "filter"
    timing = "filter"
    rejects = "a"

    def __init__(self, work: WorkArea, fields: dict[str, str], stages: list):
        super().__init__(work)
        self.fields, self.stages = fields, stages

    def announce(self, pending: list, executor_name: str) -> str:
        last = self.work.shards[-1]
        return (f"{last.gid_start + last.stop - last.start:,} rows in {len(self.work.shards)} shard(s); filtering "
                f"{len(pending)} with the {executor_name} executor")

    def run(self, shard: Shard) -> dict:
        for stage in self.stages:  # this shard's counts only (a worker may run several shards)
            stage.counters = Counter()
        records = read_shard(shard, self.fields)
        for stage in self.stages:
            records = stage.run(records)
        return {"rows": len(records), **self.pass_on(shard, records),
                "counters": {st.name: dict(st.counters) for st in self.stages}}

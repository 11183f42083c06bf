"""The curation step protocol (datatrove-shaped, as stage_interface.py is for the row filters).

A curation is a list of steps run in order (pipeline.py builds it). A step has a `name` (its folder
under work/ and the name of its markers), a `scope` and a `run`:

* `ShardStep` ("map"): `run(payload)` once per item of `items()` (a shard, or a hash partition),
  through `executor.map`, so it runs wherever the executor puts it (a forked process, a Ray task);
* `ResourceStep` ("map_with"): the same with a per-worker resource that is costly to build (a teacher
  model): `run(resource, payload)` through `executor.map_with(make_resource, ...)`;
* `GlobalStep` ("global"): `run()` once, in the driver, over what the map steps wrote (clusters, quotas,
  a cut).

What `run` returns is the step's counters for that item and is written as its completion marker,
*last*, after the files it wrote (`work/<step>/<item>.done.json`, or `work/<step>.json` for a global
step): a re-run after a crash skips every item that has one, so only unfinished work is redone. A map
step's items carry what the driver decided for them (a quota, the duplicates in that shard), so a worker
never needs the whole global result. A step that rejects rows names its `rejects` tag (the suffix of
`rejected/part-NNNNN-<tag>.*`) and counts them under "reasons" in its markers (the retention table).

To add a step: subclass one of the three, write its files under `self.work.folder(self.name)`, and put
it into the list in `Curation.steps` (pipeline.py).
"""

from __future__ import annotations

import bisect
import json
import time
from collections import Counter
from collections.abc import Iterable
from functools import partial
from pathlib import Path

from conan_embed.curate.curation_record import Record
from conan_embed.curate.io import Shard
from conan_embed.data.records import read_records, write_records
from conan_embed.files import write_json
from conan_embed.logs import get_logger

log = get_logger("curate")

TIMINGS = ("filter", "dedup", "teacher", "write")  # stats.json's timings, each step counts to one


class WorkArea:
    """Where a curation's steps keep their files, and how they find each other's (paths are absolute:
    Ray workers on other machines resolve relative ones against their own folders)."""

    def __init__(self, out: Path, shards: list[Shard], ext: str):
        self.out, self.work, self.shards, self.ext = out, out / "work", shards, ext
        self._gid_starts = [s.gid_start for s in shards]

    def folder(self, step: str) -> Path:
        return self.work / step

    def marker(self, step: str, item: str) -> Path:
        return self.work / step / f"{item}.done.json"

    def summary(self, step: str) -> Path:
        """A global step's marker, which is also its result."""
        return self.work / f"{step}.json"

    def done(self, step: str, item: str | None = None) -> dict:
        return json.loads((self.summary(step) if item is None else self.marker(step, item)).read_text())

    def shard_of(self, gid: int) -> Shard:
        return self.shards[bisect.bisect_right(self._gid_starts, gid) - 1]

    def read_rows(self, step: str, shard: Shard) -> list[Record]:
        """The rows still in after `step` (they travel between steps as work files)."""
        return [Record.from_work(d) for d in read_records(self.work / step / f"{shard.name}.jsonl")]

    def write_rows(self, step: str, shard: Shard, records: list[Record]) -> None:
        write_records(self.work / step / f"{shard.name}.jsonl", [r.to_work() for r in records if r.reason is None])

    def write_rejected(self, shard: Shard, tag: str, records: list[Record]) -> None:
        rows = [r.to_rejected_row() for r in records if r.reason is not None]
        path = self.out / "rejected" / f"{shard.name}-{tag}{self.ext}"
        if rows:
            write_records(path, rows)
        else:  # a re-run must not leave a file from an earlier, interrupted try
            path.unlink(missing_ok=True)


def reasons_of(records: Iterable[Record]) -> dict[str, int]:
    """The rejected records' reasons, counted in row order (the retention table keeps that order on ties)."""
    return dict(Counter(r.reason for r in records if r.reason))


class CurationStep:
    name = "step"
    scope = "map"
    timing = "filter"  # which of stats.json's TIMINGS it counts towards
    rejects: str | None = None  # the tag of the rejected files it writes, if it rejects rows

    def __init__(self, work: WorkArea):
        self.work = work


class ShardStep(CurationStep):
    """Runs once per item, through `executor.map`; each item's marker holds its counters."""

    scope = "map"

    def items(self) -> dict[str, object]:
        """{item name (its marker's name): what `run` gets}, in order; called in the driver, once the
        earlier steps are done. Default: each shard."""
        return {s.name: s for s in self.work.shards}

    def run(self, payload) -> dict:
        raise NotImplementedError

    def pass_on(self, shard: Shard, records: list[Record]) -> dict:
        """The shard's rejected rows to `rejected/<shard>-<rejects>.*`, the rest on to this step's work file;
        returns the marker's counts."""
        self.work.write_rejected(shard, self.rejects, records)
        self.work.write_rows(self.name, shard, records)
        return {"kept": sum(r.reason is None for r in records), "reasons": reasons_of(records)}

    def announce(self, pending: list, executor_name: str) -> str | None:
        """A log line before the step runs, if it deserves one."""
        return None


class ResourceStep(ShardStep):
    """A `ShardStep` that needs a per-worker resource (a model): built once per worker, not per item."""

    scope = "map_with"

    def make_resource(self):
        raise NotImplementedError

    def run(self, resource, payload) -> dict:
        raise NotImplementedError


class GlobalStep(CurationStep):
    """Runs once, in the driver; what it returns is its marker and its result (`work.done(name)`)."""

    scope = "global"

    def run(self) -> dict:
        raise NotImplementedError


def _run_item(step: ShardStep, job: tuple) -> dict:
    name, payload = job
    done = step.run(payload)
    write_json(step.work.marker(step.name, name), done)  # last: the item is complete
    return done


def _run_item_with(step: ResourceStep, resource, job: tuple) -> dict:
    name, payload = job
    done = step.run(resource, payload)
    write_json(step.work.marker(step.name, name), done)
    return done


class CurationRunner:
    """Runs steps in order with an executor, skipping what their markers say is done; adds each step's
    wall time to `timings` (by the step's `timing`)."""

    def __init__(self, work: WorkArea, executor, timings: dict[str, float]):
        self.work, self.executor, self.timings = work, executor, timings

    def run(self, steps: list[CurationStep]) -> None:
        for step in steps:
            t0 = time.perf_counter()
            self.run_step(step)
            self.timings[step.timing] += time.perf_counter() - t0

    def run_step(self, step: CurationStep) -> None:
        if isinstance(step, GlobalStep):
            if not self.work.summary(step.name).is_file():
                write_json(self.work.summary(step.name), step.run())
            return
        pending = [(name, payload) for name, payload in step.items().items()
                   if not self.work.marker(step.name, name).is_file()]
        if line := step.announce(pending, self.executor.name):
            log.info(line)
        self.work.folder(step.name).mkdir(parents=True, exist_ok=True)
        if isinstance(step, ResourceStep):
            self.executor.map_with(step.make_resource, partial(_run_item_with, step), pending, step.name)
        else:
            self.executor.map(partial(_run_item, step), pending, step.name)

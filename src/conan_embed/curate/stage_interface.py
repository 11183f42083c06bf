"""The stage interface (datatrove-shaped): a name, `run(records)` and counters.

A stage receives every record of a shard, rejected ones included, and returns them all: rejected
records pass through untouched, so each is written once, with the reason of the stage that dropped it.
Counters: "in", "kept" and "dropped:<rule>".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from conan_embed.curate.curation_record import Record


class Stage:
    name = "stage"
    scope = "row"  # "row": runs on each shard independently; "global": needs every shard (dedup)

    def __init__(self):
        self.counters: Counter = Counter()

    def run(self, records: Iterable[Record]) -> list[Record]:
        raise NotImplementedError


class Filter(Stage):
    """A row filter: subclasses give `check(record)` -> None (keep) or a rule name, or (rule, detail)."""

    def check(self, record: Record) -> str | tuple[str, str] | None:
        raise NotImplementedError

    def check_batch(self, records: list[Record]) -> list:
        return [self.check(r) for r in records]

    def run(self, records):
        records = list(records)
        live = [r for r in records if r.reason is None]
        self.counters["in"] += len(live)
        for record, verdict in zip(live, self.check_batch(live)):
            if verdict is None:
                self.counters["kept"] += 1
                continue
            rule, detail = verdict if isinstance(verdict, tuple) else (verdict, None)
            record.reject(f"{self.name}:{rule}", detail)
            self.counters[f"dropped:{rule}"] += 1
        return records


@runtime_checkable
class Classifier(Protocol):
    """A pluggable safety or quality model: the probability that each text is bad.

    Configure one as `{name: "my_module:MyClassifier", threshold: 0.5, options: {...}}`; it is built
    as `MyClassifier(**options)`."""

    def predict(self, texts: list[str]): ...

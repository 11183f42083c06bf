"""Training tasks: the rows of one data file, and how a planned batch of them becomes texts.

Three kinds (docs/training.md):
- ``pairs``: weak (query, passage) pairs; InfoNCE with in-batch negatives (paper Eq. 1).
- ``retrieval``: (query, positives, candidates | negatives); InfoNCE with in-batch and hard negatives.
  Hard negatives are the candidate ids ranked ``skip_top`` .. ``skip_top + count`` (the paper skips the
  top 10: near the top of a ranked list sit unlabelled positives), looked up in the corpus file, or
  the first ``count`` of a row's own ``negatives`` texts.
- ``sts``: (text1, text2, score); CoSENT.

A batch's texts are a pure function of its plan (task, rows, epoch) and the negative window, so
resolving them at step time (not in a data-loader worker ahead of time) keeps resume exact and lets
hard-negative mining change a row's window between two steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from conan_embed.data.records import read_records
from conan_embed.errors import InputError
from conan_embed.training.config import TaskConfig

RECORD_KIND = {"pairs": "weak_pair", "retrieval": "retrieval", "sts": "sts"}


@dataclass(frozen=True)
class StepPlan:
    """One micro-batch: which rows of which task. Every random choice is in here (rows come from the
    composer's seeded permutation; the positive picked for a row cycles with the epoch)."""

    task: str
    rows: tuple[int, ...]
    epoch: int = 0


@dataclass
class TaskBatch:
    """The texts of one planned micro-batch."""

    task: str
    ids: list  # one id per row (the row's `id`, or its row index)
    queries: list[str]
    passages: list[str]  # positives (pairs / retrieval) or text2 (sts)
    negatives: list[list[str]] | None = None  # retrieval: `count` texts per row
    negative_ids: list[list] | None = None
    labels: list[float] | None = None  # sts scores


class TrainingTask:
    """One task of a stage: its config and its validated rows."""

    def __init__(self, name: str, config: TaskConfig, data_dir: str | Path, *, key: str = "tasks"):
        self.name, self.config, self.kind = name, config, config.kind
        path = Path(data_dir) / config.file
        if not path.exists():
            raise InputError(f"{key}.{name}.file: no such data file or folder", path=path, field=f"{key}.{name}.file")
        self.path = path
        self.rows = list(read_records(path, RECORD_KIND[self.kind]))
        if len(self.rows) < config.batch_size:
            raise InputError(f"{key}.{name}: {len(self.rows)} rows, fewer than one batch of {config.batch_size}",
                             path=path, field=f"{key}.{name}.batch_size")
        self.corpus: dict[str, str] = {}
        if self.kind == "retrieval":
            self._check_negatives(data_dir, key)

    def _check_negatives(self, data_dir, key: str) -> None:
        count, skip = self.config.negatives.count, self.config.negatives.skip_top
        uses_ids = any(r.get("candidates") is not None for r in self.rows)
        if uses_ids:
            if self.config.corpus is None:
                raise InputError(f"{key}.{self.name}.corpus is needed: the rows name candidate ids",
                                 path=self.path, field=f"{key}.{self.name}.corpus")
            corpus_path = Path(data_dir) / self.config.corpus
            if not corpus_path.is_file():
                raise InputError(f"{key}.{self.name}.corpus: no such data file", path=corpus_path,
                                 field=f"{key}.{self.name}.corpus")
            self.corpus = {str(r["id"]): r["text"] for r in read_records(corpus_path, "corpus")}
        for number, row in enumerate(self.rows, 1):
            if row.get("candidates") is not None:
                window = self.negative_window(number - 1)
                if len(window) < count:
                    raise InputError(f"{len(row['candidates'])} candidates; negatives.skip_top {skip} + count "
                                     f"{count} needs {skip + count}", path=self.path, row=number,
                                     field="candidates")
                missing = [c for c in window if c not in self.corpus]
                if missing:
                    raise InputError(f"candidate id {missing[0]!r} is not in {self.config.corpus}",
                                     path=self.path, row=number, field="candidates")
            elif len(row.get("negatives") or []) < count:
                raise InputError(f"{len(row.get('negatives') or [])} negatives, negatives.count is {count}",
                                 path=self.path, row=number, field="negatives")

    def __len__(self) -> int:
        return len(self.rows)

    def conflict_keys(self, index: int) -> tuple:
        """Texts (or ids) that must not appear twice in one in-batch-negative batch: a duplicate would be
        scored as a negative of its own twin."""
        row = self.rows[index]
        if self.kind == "pairs":
            return ("q", row["query"]), ("p", row["passage"])
        if self.kind == "retrieval":
            pos = row.get("positive_ids") or row["positives"]
            return (("q", row["query"]),) + tuple(("p", str(p)) for p in pos)
        return ()

    def negative_window(self, index: int) -> list:
        """The candidate ids used as this row's hard negatives (the static first window; mining moves it)."""
        cfg = self.config.negatives
        return [str(c) for c in self.rows[index]["candidates"][cfg.skip_top: cfg.skip_top + cfg.count]]

    def texts(self, plan: StepPlan) -> TaskBatch:
        rows = [self.rows[i] for i in plan.rows]
        ids = [r.get("id", i) for r, i in zip(rows, plan.rows)]
        if self.kind == "sts":
            return TaskBatch(self.name, ids, [r["text1"] for r in rows], [r["text2"] for r in rows],
                             labels=[float(r["score"]) for r in rows])
        if self.kind == "pairs":
            return TaskBatch(self.name, ids, [r["query"] for r in rows], [r["passage"] for r in rows])
        positives = [r["positives"][plan.epoch % len(r["positives"])] for r in rows]
        count = self.config.negatives.count
        negative_ids, negatives = [], []
        for i, r in zip(plan.rows, rows):
            if r.get("candidates") is not None:
                window = self.negative_window(i)
                negative_ids.append(window)
                negatives.append([self.corpus[c] for c in window])
            else:
                negative_ids.append(list(range(count)))
                negatives.append(r["negatives"][:count])
        return TaskBatch(self.name, ids, [r["query"] for r in rows], positives, negatives, negative_ids)


def load_tasks(tasks: dict[str, TaskConfig], data_dir: str | Path, *, key: str = "tasks") -> dict[str, TrainingTask]:
    return {name: TrainingTask(name, cfg, data_dir, key=key) for name, cfg in tasks.items()}

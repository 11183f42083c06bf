"""The teacher as curation steps: scores per shard (one model per worker, `executor.map_with`), then
the cut over all scores in the driver (teacher.py has the scorer and the cut)."""

from __future__ import annotations

import numpy as np

from conan_embed.curate.curate_config import TeacherConfig
from conan_embed.curate.curation_steps import GlobalStep, ResourceStep, WorkArea
from conan_embed.curate.io import Shard
from conan_embed.curate.teacher import TeacherScorer, histogram, score_cut


class TeacherScores(ResourceStep):
    """Per shard: each pair's cosine and the mismatched-pair baseline, `work/teacher/<shard>.npz`."""

    name = "teacher"
    timing = "teacher"

    def __init__(self, work: WorkArea, config: TeacherConfig, fields: dict[str, str], source: str):
        super().__init__(work)
        self.config, self.fields, self.source = config, fields, source

    def make_resource(self) -> TeacherScorer:
        return TeacherScorer(self.config)

    def announce(self, pending: list, executor_name: str) -> str | None:
        if not pending:
            return None
        pairs = sum(self.work.done(self.source, name)["kept"] for name, _ in pending)
        return f"teacher {self.config.model}: scoring {pairs:,} pairs"

    def run(self, scorer: TeacherScorer, shard: Shard) -> dict:
        records = self.work.read_rows(self.source, shard)
        scores = baseline = np.zeros(0, np.float32)
        if records:
            q, p = self.fields["query"], self.fields["passage"]
            scores, baseline = scorer.score([r.row[q] for r in records], [r.row[p] for r in records])
        np.savez(self.work.folder(self.name) / f"{shard.name}.npz", scores=scores, baseline=baseline)
        return {"scored": len(records)}


def shard_scores(work: WorkArea, shard: Shard) -> dict[str, np.ndarray]:
    """A shard's scores as written into its rows (rounded: so that the cut and the files agree), and its
    baseline."""
    loaded = dict(np.load(work.folder(TeacherScores.name) / f"{shard.name}.npz"))
    loaded["scores"] = np.round(loaded["scores"].astype(np.float64), 6)
    return loaded


class TeacherCut(GlobalStep):
    """The lowest score kept (absolute and/or percentile, over every shard's scores), with the score
    quantiles, the baseline's and the histogram for stats.json."""

    name = "teacher-cut"
    timing = "write"

    def __init__(self, work: WorkArea, config: TeacherConfig):
        super().__init__(work)
        self.config = config

    def run(self) -> dict:
        loaded = [shard_scores(self.work, s) for s in self.work.shards]
        scores = np.concatenate([a["scores"] for a in loaded])
        baseline = np.concatenate([a["baseline"] for a in loaded])
        return {"cut": score_cut(scores, self.config), "scored": int(len(scores)),
                "score_quantiles": quantiles(scores), "mismatched_pair_quantiles": quantiles(baseline),
                "histogram": histogram(scores)}


def quantiles(x: np.ndarray) -> dict:
    if not len(x):
        return {}
    return {f"p{q}": round(float(np.percentile(x, q)), 4) for q in (1, 5, 10, 50, 90, 99)}

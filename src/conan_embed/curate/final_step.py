"""The last curation step: the teacher's cut applied and the final files written, per shard."""

from __future__ import annotations

from conan_embed.curate.curation_steps import ShardStep, WorkArea, reasons_of
from conan_embed.curate.io import Shard
from conan_embed.curate.teacher_steps import TeacherCut, shard_scores
from conan_embed.data.records import write_records


class WriteFinal(ShardStep):
    """Per shard: each row gets its `score` (with the teacher on), rows below the cut go to
    `rejected/<shard>-teacher.*` (`teacher:below_cut`), the rest to `kept/<shard>.*`."""

    name = "final"
    timing = "write"
    rejects = "teacher"

    def __init__(self, work: WorkArea, source: str, teacher: bool):
        super().__init__(work)
        self.source, self.teacher = source, teacher

    def items(self) -> dict:
        cut = self.work.done(TeacherCut.name)["cut"] if self.teacher else None
        return {s.name: (s, cut) for s in self.work.shards}

    def run(self, job: tuple[Shard, float | None]) -> dict:
        shard, cut = job
        records = self.work.read_rows(self.source, shard)
        if self.teacher:
            for r, score in zip(records, shard_scores(self.work, shard)["scores"].tolist()):
                r.row["score"] = score
                if cut is not None and score < cut:
                    r.reject("teacher:below_cut", f"score {score:.4f} < cut {cut:.4f}")
        self.work.write_rejected(shard, self.rejects, records)
        kept = write_records(self.work.out / "kept" / f"{shard.name}{self.work.ext}",
                             [r.row for r in records if r.reason is None])
        return {"kept": kept, "reasons": reasons_of(records)}

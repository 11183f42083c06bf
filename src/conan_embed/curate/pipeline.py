"""`conan-embed curate`: raw pairs -> kept pairs, rejected pairs with reasons, and a retention table.

    DIR/kept/part-NNNNN.jsonl|parquet      kept rows: every input field, plus `score` (the teacher's)
    DIR/rejected/part-NNNNN-<tag>.*        rejected rows (tag a, dedup, sample, teacher): every input
                                           field, plus reason, detail, origin (file:row) and, for
                                           duplicates, duplicate_of
    DIR/stats.json                         the retention table, the teacher's cut and histogram, timings
    DIR/work/plan.json                     the settings' hash, the inputs' sizes and times, the shards
    DIR/work/<step>/                       a step's files, and per shard (or partition) its marker
                                           <item>.done.json, written last
    DIR/work/<step>.json                   a global step's result, which is its marker

The steps, in this order (curation_steps.py has the protocol; docs/curation.md):
  filter                 map: read -> normalize -> language -> heuristics -> safety -> quality (filter_step.py);
  dedup-*                signatures (map), exact (global), bands (map), edges (map per hash partition),
                         clusters (global), filter (map): the first row in input order kept (dedup_steps.py);
  sample-quotas, sample  the optional budget: quotas (global), a seeded sample per shard (sample_steps.py);
  teacher, teacher-cut   scores (map_with: one model per worker), the cut (global) (teacher_steps.py);
  final                  map: the cut applied, the kept and rejected files (final_step.py).
A re-run after a crash redoes only unfinished work (the markers); a re-run with different settings is
refused (naming them) unless `overwrite`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections import Counter
from pathlib import Path

from conan_embed.curate.curate_config import CurateConfig, StagesConfig
from conan_embed.curate.curation_steps import TIMINGS, CurationStep, CurationRunner, WorkArea
from conan_embed.curate.dedup import DedupStage
from conan_embed.curate.dedup_steps import DedupClusters, dedup_steps
from conan_embed.curate.executors import make_executor
from conan_embed.curate.filter_step import FilterRows
from conan_embed.curate.final_step import WriteFinal
from conan_embed.curate.io import plan_shards
from conan_embed.curate.sample_steps import SampleQuotas, SampleRows
from conan_embed.curate.teacher_steps import TeacherCut, TeacherScores
from conan_embed.errors import InputError
from conan_embed.files import write_json
from conan_embed.logs import get_logger

TABLE_STAGES = ("read", "normalize", "language", "heuristics", "safety", "quality", "dedup", "sample", "teacher")


log = get_logger("curate")


def build_row_stages(cfg: CurateConfig) -> list:
    """The enabled per-row stages, in order (classifiers load and train here, once)."""
    from conan_embed.curate.heuristics import HeuristicFilter
    from conan_embed.curate.language import LanguageFilter
    from conan_embed.curate.normalize import TextNormalizer
    from conan_embed.curate.quality import QualityFilter
    from conan_embed.curate.safety import SafetyFilter

    s, f = cfg.stages, cfg.fields
    built = [TextNormalizer(s.normalize, f) if s.normalize.enabled else None,
             LanguageFilter(s.language, f) if s.language.enabled else None,
             HeuristicFilter(s.heuristics, f) if s.heuristics.enabled else None,
             SafetyFilter(s.safety, f, cfg.resolve) if s.safety.enabled else None,
             QualityFilter(s.quality, f, cfg.resolve) if s.quality.enabled else None]
    return [stage for stage in built if stage is not None]


# stage settings added after curations were first written: left out of the settings (and so of the
# hash) while at their default, so an earlier curation, which ran exactly that, stays complete
_LATER_KEYS = {"teacher": ("backend", "onnx_file"), "sample": ("shares",)}


def _settings(cfg: CurateConfig) -> dict:
    """What decides the output: everything but the executor (both executors write the same files)."""
    data = dataclasses.asdict(cfg)
    data.pop("executor")
    data.pop("source")
    for stage, keys in _LATER_KEYS.items():
        settings, defaults = data["stages"][stage], getattr(StagesConfig(), stage)
        for key in keys:
            if settings.get(key) == getattr(defaults, key):
                settings.pop(key)
    return data


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) and v else {key: v})
    return out


def _inputs_stamp(inputs: list[str]) -> list:
    return [[str(p), Path(p).stat().st_size, Path(p).stat().st_mtime_ns] for p in inputs]


class Curation:
    """One curation run into `output`; `run()` does (or finishes) it and returns stats.json's content.

    It plans the shards, builds the list of steps (`steps`) and runs them in order with the executor
    (curation_steps.CurationRunner), then writes stats.json from the steps' markers."""

    def __init__(self, inputs: list[str | Path], output: str | Path, config: CurateConfig | None = None, *,
                 overwrite: bool = False, show_progress: bool = True):
        self.cfg = config or CurateConfig()
        self.shown = {"inputs": [str(p) for p in inputs], "output": str(output)}  # as given, for stats and reports
        # absolute: Ray workers on other machines resolve relative paths against their own folders
        self.inputs = [str(Path(p).resolve()) for p in inputs]
        self.out = Path(output).resolve()
        self.work = self.out / "work"
        self.show_progress = show_progress
        self.ext = ".parquet" if self.cfg.output_format == "parquet" else ".jsonl"
        self.settings = _settings(self.cfg)
        self.hash = hashlib.sha256(json.dumps(self.settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.shards = plan_shards(self.inputs, self.cfg.shard_rows)  # fails on a missing / empty input
        self._prepare_output(overwrite)
        self.area = WorkArea(self.out, self.shards, self.ext)
        self.row_stages = build_row_stages(self.cfg)
        self.dedup = DedupStage(self.cfg.stages.dedup, self.cfg.fields) if self.cfg.stages.dedup.enabled else None
        self.timings = dict.fromkeys(TIMINGS, 0.0)
        self.steps = self._build_steps()

    def _prepare_output(self, overwrite: bool) -> None:
        plan_file = self.work / "plan.json"
        plan = {"settings": self.settings, "hash": self.hash, "inputs": _inputs_stamp(self.inputs),
                "shards": [s.to_dict() for s in self.shards]}
        if overwrite and self.out.exists():
            for name in ("kept", "rejected", "work", "stats.json"):
                target = self.out / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        if plan_file.is_file():
            old = json.loads(plan_file.read_text())
            if old["hash"] != self.hash:
                before, after = _flatten(old["settings"]), _flatten(self.settings)
                changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
                raise InputError(f"{self.out} holds a curation with other settings ({', '.join(changed)}); "
                                 f"use another --output or --overwrite", path=self.out)
            if old["inputs"] != plan["inputs"]:
                raise InputError(f"{self.out} holds a curation of other or changed input files; use another "
                                 f"--output or --overwrite", path=self.out)
        elif self.out.exists() and any(p for p in self.out.iterdir() if p.name != "work"):
            raise InputError(f"{self.out} is not empty and holds no curation; use another --output or "
                             f"--overwrite", path=self.out)
        self.work.mkdir(parents=True, exist_ok=True)
        write_json(plan_file, plan)

    def _build_steps(self) -> list[CurationStep]:
        """The enabled steps in order; each per-shard step reads the rows the last row-writing step left."""
        stages, area = self.cfg.stages, self.area
        steps: list[CurationStep] = [FilterRows(area, self.cfg.fields, self.row_stages)]
        rows = FilterRows.name
        if self.dedup is not None:
            steps += dedup_steps(area, self.dedup, rows, self.timings)
            rows = steps[-1].name
        if stages.sample.size is not None:
            steps += [SampleQuotas(area, stages.sample, rows), SampleRows(area, stages.sample, rows)]
            rows = SampleRows.name
        if stages.teacher.enabled:
            steps += [TeacherScores(area, stages.teacher, self.cfg.fields, rows), TeacherCut(area, stages.teacher)]
        return [*steps, WriteFinal(area, rows, teacher=stages.teacher.enabled)]

    def run(self) -> dict:
        stats_file = self.out / "stats.json"
        if stats_file.is_file():
            stats = json.loads(stats_file.read_text())
            if stats.get("hash") == self.hash:
                log.info(f"{self.out} is complete (stats.json); --overwrite to redo it")
                return stats
        executor = make_executor(self.cfg.executor, self.show_progress)
        try:
            CurationRunner(self.area, executor, self.timings).run(self.steps)
        finally:
            executor.close()
        stats = self._stats()
        write_json(stats_file, stats)
        return stats

    def _stats(self) -> dict:
        done = self.area.done
        reasons: Counter = Counter()
        for step in self.steps:
            if step.rejects:
                for s in self.shards:
                    reasons.update(done(step.name, s.name)["reasons"])
        filtered = [done(FilterRows.name, s.name) for s in self.shards]
        kept = sum(done(WriteFinal.name, s.name)["kept"] for s in self.shards)
        total = sum(d["rows"] for d in filtered)
        table, n = [], total
        for stage in TABLE_STAGES:
            dropped = {k.split(":", 1)[1]: v for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])
                       if k.split(":", 1)[0] == stage}
            enabled = stage == "read" or stage == "sample" and self.cfg.stages.sample.size is not None or \
                stage not in ("read", "sample") and getattr(self.cfg.stages, stage).enabled
            if not enabled and not dropped:
                continue
            d = sum(dropped.values())
            table.append({"stage": stage, "in": n, "kept": n - d, "dropped": d, "reasons": dropped})
            n -= d
        if n != kept:
            raise RuntimeError(f"retention table ends at {n} rows but {kept} were written")
        counters: dict = {}
        for d in filtered:
            for stage, c in d["counters"].items():
                counters.setdefault(stage, Counter()).update(c)
        dedup = done(DedupClusters.name) if self.dedup is not None else {}
        teacher = self.cfg.stages.teacher
        return {
            "hash": self.hash, **self.shown, "rows_in": total,
            "kept": kept, "table": table,
            "counters": {k: dict(v) for k, v in counters.items()},
            "dedup": {k: v for k, v in dedup.items() if k != "removed"},
            "teacher": None if not teacher.enabled else {
                "model": teacher.model, "threshold": teacher.threshold, "percentile": teacher.percentile,
                **done(TeacherCut.name)},
            "timings": {f"{k}_s": round(v, 2) for k, v in self.timings.items()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def curate(inputs: list[str | Path], output: str | Path, config: CurateConfig | None = None, *,
           overwrite: bool = False, show_progress: bool = True) -> dict:
    """Curate raw pair files into `output` (see the module docstring); returns stats.json's content."""
    return Curation(inputs, output, config, overwrite=overwrite, show_progress=show_progress).run()

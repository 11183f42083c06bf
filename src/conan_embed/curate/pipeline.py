"""`conan-embed curate`: raw pairs -> kept pairs, rejected pairs with reasons, and a retention table.

    DIR/kept/part-NNNNN.jsonl|parquet      kept rows: every input field, plus `score` (the teacher's)
    DIR/rejected/part-NNNNN-<phase>.*      rejected rows: every input field, plus reason, detail,
                                           origin (file:row) and, for duplicates, duplicate_of
    DIR/stats.json                         the retention table, the teacher's cut and histogram, timings
    DIR/work/                              per-shard intermediate files and completion markers

Four phases, in this order (docs/curation.md):
  A. per shard: read -> normalize -> language -> heuristics -> safety -> quality, and the dedup keys;
  B. global: exact, then MinHash near-duplicate clusters over every shard (first row in input order kept);
  C. per shard: drop duplicates -> seeded sample (optional budget) -> teacher scores;
  D. global: the teacher's cut (absolute and/or percentile), then the final kept / rejected shards.
Each shard of a phase ends with a marker written last, so a re-run after a crash redoes only
unfinished work; a re-run with different settings is refused (naming them) unless `overwrite`.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np

from conan_embed.curate.curate_config import CurateConfig, StagesConfig
from conan_embed.curate.dedup import DedupStage
from conan_embed.curate.executors import make_executor
from conan_embed.curate.io import Shard, plan_shards, read_shard
from conan_embed.curate.curation_record import Record
from conan_embed.curate.teacher import TeacherScorer, histogram, score_cut
from conan_embed.data.records import read_records, write_records
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
    """One curation run into `output`; `run()` does (or finishes) it and returns stats.json's content."""

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
        self._gid_starts = [s.gid_start for s in self.shards]
        self._prepare_output(overwrite)
        self.row_stages = build_row_stages(self.cfg)
        self.dedup = DedupStage(self.cfg.stages.dedup, self.cfg.fields) if self.cfg.stages.dedup.enabled else None

    # -- bookkeeping ---------------------------------------------------------------------------------
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

    def _marker(self, phase: str, shard: Shard) -> Path:
        return self.work / phase / f"{shard.name}.done.json"

    def _pending(self, phase: str) -> list[Shard]:
        return [s for s in self.shards if not self._marker(phase, s).is_file()]

    def _rejected_file(self, shard: Shard, phase: str) -> Path:
        return self.out / "rejected" / f"{shard.name}-{phase}{self.ext}"

    def _write_rejected(self, shard: Shard, phase: str, records: list[Record]) -> None:
        rows = [r.to_rejected_row() for r in records if r.reason is not None]
        path = self._rejected_file(shard, phase)
        if rows:
            write_records(path, rows)
        else:
            path.unlink(missing_ok=True)

    # -- phase A: row stages --------------------------------------------------------------------------
    def row_phase(self, shard: Shard) -> dict:
        records = read_shard(shard, self.cfg.fields)
        for stage in self.row_stages:
            records = stage.run(records)
        live = [r for r in records if r.reason is None]
        self._write_rejected(shard, "a", records)
        write_records(self.work / "a" / f"{shard.name}.jsonl", [r.to_work() for r in live])
        if self.dedup is not None:
            arrays = self.dedup.prepare(live)
            np.save(self.work / "a" / f"{shard.name}.sig.npy", arrays.pop("sig"))  # memory-mapped later
            np.savez(self.work / "a" / f"{shard.name}.npz", **arrays)
        done = {"rows": len(records), "kept": len(live),
                "reasons": dict(Counter(r.reason for r in records if r.reason)),
                "counters": {st.name: dict(st.counters) for st in self.row_stages}}
        write_json(self._marker("a", shard), done)
        return done

    # -- phase B: dedup --------------------------------------------------------------------------------
    def _signatures(self, part: str) -> np.ndarray:
        return np.load(self.work / "a" / f"{part}.sig.npy", mmap_mode="r")

    def _band_keys(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        return np.load(self.work / "a" / f"{part}.npz")["gid"], self.dedup.detector.band_keys(self._signatures(part))

    def _shard_of(self, gid: int) -> Shard:
        return self.shards[bisect.bisect_right(self._gid_starts, gid) - 1]

    def _records_by_gid(self, gids: set[int]) -> dict[int, Record]:
        """The phase-A survivors with these gids, reading only the shards that hold them."""
        found = {}
        for s in {self._shard_of(g).index: self._shard_of(g) for g in gids}.values():
            for data in read_records(self.work / "a" / f"{s.name}.jsonl"):
                if data["gid"] in gids:
                    found[data["gid"]] = Record.from_work(data)
        return found

    def dedup_phase(self, executor) -> dict:
        done_file = self.work / "dedup.json"
        if done_file.is_file():
            return json.loads(done_file.read_text())
        parts = [s.name for s in self.shards]
        loaded = [dict(np.load(self.work / "a" / f"{p}.npz")) for p in parts]  # gid + hash: 16 B per row
        gid = np.concatenate([a["gid"] for a in loaded]) if loaded else np.zeros(0, np.int64)
        hashes = np.concatenate([a["hash"] for a in loaded]) if loaded else np.zeros(0, np.uint64)
        cache: dict[int, Record] = {}

        def records(ids) -> dict[int, Record]:
            missing = {int(i) for i in ids} - cache.keys()
            if missing:
                cache.update(self._records_by_gid(missing))
            return {int(i): cache[int(i)] for i in ids}

        def signatures(ids) -> dict:
            out = {}
            for part, a in zip(parts, loaded):
                rows = np.flatnonzero(np.isin(a["gid"], ids))
                if len(rows):
                    sig = self._signatures(part)
                    out.update(zip(a["gid"][rows].tolist(), sig[rows]))
            return out

        def edges_of(alive):
            return executor.candidate_edges(self._band_keys, parts, gid[~alive])

        t0 = time.perf_counter()
        removed = self.dedup.find(gid, hashes, edges_of,
                                  lambda ids: {g: self.dedup.key(r) for g, r in records(ids).items()}, signatures)
        heads = records({h for _, h in removed.values()})
        result = {"removed": {str(g): [rule, heads[h].ref] for g, (rule, h) in sorted(removed.items())},
                  "bands": self.dedup.detector.bands, "rows": self.dedup.detector.rows,
                  "seconds": round(time.perf_counter() - t0, 2)}
        write_json(done_file, result)
        return result

    # -- phase C: duplicates out, sample, teacher scores --------------------------------------------------
    def _quotas(self, survivors: dict[str, int]) -> dict[str, int | None]:
        """Each shard's share of the sample budget, in proportion to its survivors (largest remainder)."""
        size, total = self.cfg.stages.sample.size, sum(survivors.values())
        if size is None or size >= total:
            return {k: None for k in survivors}
        return _apportion(survivors, size)

    def _sample(self, records: list[Record], quota: int | None, shard: Shard) -> list[Record]:
        """Marks all but `quota` live records `sample:budget`, stratified by `sample.by`, seeded."""
        live = [r for r in records if r.reason is None]
        if quota is None or quota >= len(live):
            return records
        cfg = self.cfg.stages.sample
        rng = np.random.default_rng([cfg.seed, shard.index])
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

    def score_phase(self, scorer: TeacherScorer | None, job: tuple) -> dict:
        shard, quota, removed = job
        records = [Record.from_work(d) for d in read_records(self.work / "a" / f"{shard.name}.jsonl")]
        for r in records:
            if str(r.gid) in removed:
                rule, ref = removed[str(r.gid)]
                r.reject(f"dedup:{rule}", f"{self.cfg.stages.dedup.key} is a duplicate of {ref}", duplicate_of=ref)
        self._write_rejected(shard, "dedup", records)
        records = [r for r in records if r.reason is None]
        self._sample(records, quota, shard)
        self._write_rejected(shard, "sample", records)
        sampled_out = sum(r.reason is not None for r in records)
        records = [r for r in records if r.reason is None]
        scores = baseline = np.zeros(0, np.float32)
        if scorer is not None and records:
            q, p = self.cfg.fields["query"], self.cfg.fields["passage"]
            scores, baseline = scorer.score([r.row[q] for r in records], [r.row[p] for r in records])
        write_records(self.work / "c" / f"{shard.name}.jsonl", [r.to_work() for r in records])
        np.savez(self.work / "c" / f"{shard.name}.npz", scores=scores, baseline=baseline)
        done = {"rows": len(records), "reasons": {"sample:budget": sampled_out} if sampled_out else {}}
        write_json(self._marker("c", shard), done)
        return done

    # -- phase D: the teacher's cut and the final files ------------------------------------------------
    def finish(self) -> dict:
        teacher = self.cfg.stages.teacher
        loaded = {s.name: dict(np.load(self.work / "c" / f"{s.name}.npz")) for s in self.shards}
        for a in loaded.values():  # the scores as written into the rows, so that the cut and the files agree
            a["scores"] = np.round(a["scores"].astype(np.float64), 6)
        scores = np.concatenate([a["scores"] for a in loaded.values()])
        baseline = np.concatenate([a["baseline"] for a in loaded.values()])
        use_teacher = teacher.enabled
        cut = score_cut(scores, teacher) if use_teacher else None
        kept_total, below_cut = 0, 0
        for s in self.shards:
            records = [Record.from_work(d) for d in read_records(self.work / "c" / f"{s.name}.jsonl")]
            shard_scores = loaded[s.name]["scores"]
            for r, score in zip(records, shard_scores.tolist() if use_teacher else [None] * len(records)):
                if score is not None:
                    r.row["score"] = score
                    if cut is not None and score < cut:
                        r.reject("teacher:below_cut", f"score {score:.4f} < cut {cut:.4f}")
                        below_cut += 1
            self._write_rejected(s, "teacher", records)
            kept = [r.row for r in records if r.reason is None]
            kept_total += write_records(self.out / "kept" / f"{s.name}{self.ext}", kept)
        return {"cut": cut, "scores": scores, "baseline": baseline, "kept": kept_total,
                "reasons": {"teacher:below_cut": below_cut} if below_cut else {}}

    # -- the whole run ------------------------------------------------------------------------------------
    def run(self) -> dict:
        stats_file = self.out / "stats.json"
        if stats_file.is_file():
            stats = json.loads(stats_file.read_text())
            if stats.get("hash") == self.hash:
                log.info(f"{self.out} is complete (stats.json); --overwrite to redo it")
                return stats
        executor = make_executor(self.cfg.executor, self.show_progress)
        timings = {}
        try:
            t0 = time.perf_counter()
            (self.work / "a").mkdir(parents=True, exist_ok=True)
            pending = self._pending("a")
            last = self.shards[-1]
            log.info(f"{last.gid_start + last.stop - last.start:,} rows in {len(self.shards)} shard(s); filtering "
                 f"{len(pending)} with the {executor.name} executor")
            executor.map(self.row_phase, pending, "filter")
            phase_a = {s.name: json.loads(self._marker("a", s).read_text()) for s in self.shards}
            timings["filter_s"] = round(time.perf_counter() - t0, 2)

            t0 = time.perf_counter()
            dedup = self.dedup_phase(executor) if self.dedup is not None else {"removed": {}}
            timings["dedup_s"] = round(time.perf_counter() - t0, 2)

            t0 = time.perf_counter()
            (self.work / "c").mkdir(parents=True, exist_ok=True)
            removed = dedup["removed"]
            removed_in: dict[str, dict] = {s.name: {} for s in self.shards}
            for g, v in removed.items():
                removed_in[self._shard_of(int(g)).name][g] = v
            survivors = {s.name: phase_a[s.name]["kept"] - len(removed_in[s.name]) for s in self.shards}
            quotas = self._quotas(survivors)
            jobs = [(s, quotas[s.name], removed_in[s.name]) for s in self._pending("c")]
            teacher = self.cfg.stages.teacher
            if teacher.enabled and jobs:
                log.info(f"teacher {teacher.model}: scoring {sum(min(survivors[j[0].name], j[1] or 1 << 62) for j in jobs):,}"
                     f" pairs")
                executor.score(lambda: TeacherScorer(teacher), self.score_phase, jobs, "teacher")
            else:
                executor.map(lambda job: self.score_phase(None, job), jobs, "sample")
            timings["teacher_s"] = round(time.perf_counter() - t0, 2)
        finally:
            executor.close()

        t0 = time.perf_counter()
        final = self.finish()
        timings["write_s"] = round(time.perf_counter() - t0, 2)
        phase_c = [json.loads(self._marker("c", s).read_text()) for s in self.shards]
        stats = self._stats(phase_a, phase_c, dedup, final, timings)
        write_json(stats_file, stats)
        return stats

    def _stats(self, phase_a: dict, phase_c: list[dict], dedup: dict, final: dict, timings: dict) -> dict:
        reasons: Counter = Counter()
        for done in [*phase_a.values(), *phase_c]:
            reasons.update(done["reasons"])
        reasons.update(f"dedup:{rule}" for rule, _ in dedup["removed"].values())
        reasons.update(final["reasons"])
        total = sum(d["rows"] for d in phase_a.values())
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
        if n != final["kept"]:
            raise RuntimeError(f"retention table ends at {n} rows but {final['kept']} were written")
        counters: dict = {}
        for done in phase_a.values():
            for stage, c in done["counters"].items():
                counters.setdefault(stage, Counter()).update(c)
        teacher = self.cfg.stages.teacher
        scores, baseline = final["scores"], final["baseline"]
        return {
            "hash": self.hash, **self.shown, "rows_in": total,
            "kept": final["kept"], "table": table,
            "counters": {k: dict(v) for k, v in counters.items()},
            "dedup": {k: v for k, v in dedup.items() if k != "removed"},
            "teacher": None if not teacher.enabled else {
                "model": teacher.model, "threshold": teacher.threshold, "percentile": teacher.percentile,
                "cut": final["cut"], "scored": int(len(scores)),
                "score_quantiles": _quantiles(scores), "mismatched_pair_quantiles": _quantiles(baseline),
                "histogram": histogram(scores)},
            "timings": timings, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


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


def _quantiles(x: np.ndarray) -> dict:
    if not len(x):
        return {}
    return {f"p{q}": round(float(np.percentile(x, q)), 4) for q in (1, 5, 10, 50, 90, 99)}


def curate(inputs: list[str | Path], output: str | Path, config: CurateConfig | None = None, *,
           overwrite: bool = False, show_progress: bool = True) -> dict:
    """Curate raw pair files into `output` (see the module docstring); returns stats.json's content."""
    return Curation(inputs, output, config, overwrite=overwrite, show_progress=show_progress).run()

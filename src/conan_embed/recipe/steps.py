"""A pipeline is a list of steps; `StepRunner` executes the list, resumes it and times it.

A step (`Step`) says what it is: a name, the paths it reads and writes, a fingerprint of everything that
decides its output, `run()` returning its stats (a JSON-able dict), and whether it runs on rank 0 only.
The runner stamps each finished step into `<folder>/steps/<name>.json` (fingerprint, stats, seconds, the
sha256 of each output file), written last; on `resume` a step whose stamp holds today's fingerprint and
whose outputs exist with the bytes it wrote is not run again, its stats are read back. The bytes matter
where runs share a data folder: a mined file is the product of one run's model, and another run mining
into the same place must not pass for it. A step without a fingerprint (cheap, or resuming by itself,
like a stage from its checkpoints) always runs.

Launched on several processes (torchrun, `--nproc`), every process runs the same list: a rank-0-only step
is skipped on the other ranks, and the runner holds every rank at a barrier after it when a later step
runs on all ranks (training after data preparation, say), never when only rank-0 steps follow (nobody
waits in a collective while rank 0 evaluates for an hour). A step for every rank that has a fingerprint
(mining) holds them at a barrier once each has read its stamp, so they all skip it or all run it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from conan_embed.errors import InputError
from conan_embed.files import content_digest, write_json
from conan_embed.logs import get_logger
from conan_embed.training.launch import barrier, init_from_launch, launched_rank_and_world

log = get_logger("run")


class Step:
    """One unit of a pipeline. Subclasses set `name` (unique in its list) and `run`; the rest is optional."""

    name: str = "step"
    rank0_only: bool = True  # data, curation, merging, evaluation; training and mining run on every rank
    record: tuple[str, ...] = ()  # where its stats go in the pipeline's summary (metrics.json), if anywhere

    def inputs(self) -> list[Path]:
        """What it reads (for a reader of the list; resume goes by the fingerprint, which covers them)."""
        return []

    def outputs(self) -> list[Path]:
        """What must exist for a stamped step to count as done (files: with the bytes the step wrote)."""
        return []

    def fingerprint(self) -> dict | None:
        """Everything that decides the output; None: run it every time."""
        return None

    def run(self, *, resume: bool, show_progress: bool) -> dict:
        raise NotImplementedError

    def report(self, stats: dict) -> list[str]:
        """Markdown lines for report.md (a section), from the stats alone."""
        return []

    def recorded(self, stats: dict):
        """What goes into the pipeline's summary at `record` (default: the stats)."""
        return stats


@dataclass
class StepResult:
    name: str
    stats: dict
    seconds: float
    reused: bool  # read back from the step's stamp, not run


class StepRunner:
    """Runs steps in order with stamps under `folder/steps/`; `results` holds each step's StepResult."""

    def __init__(self, folder: str | Path, *, resume: bool, show_progress: bool = True):
        self.folder = Path(folder)
        self.resume, self.show_progress = resume, show_progress
        self.results: dict[str, StepResult] = {}

    def stamp_path(self, step: Step) -> Path:
        return self.folder / "steps" / f"{step.name}.json"

    def done(self, step: Step, fingerprint: dict | None) -> dict | None:
        """The stamp of a finished step with this fingerprint and its outputs in place, else None."""
        path = self.stamp_path(step)
        if not self.resume or fingerprint is None or not path.is_file():
            return None
        stamp = json.loads(path.read_text())
        if stamp.get("fingerprint") != json.loads(json.dumps(fingerprint, default=str)):
            return None
        if not all(Path(p).exists() for p in step.outputs()):
            return None
        for path, digest in stamp.get("outputs", {}).items():
            if not Path(path).is_file() or content_digest(path) != digest:
                log.info(f"{step.name}: {path} changed since this run wrote it; running the step again")
                return None
        return stamp

    @staticmethod
    def output_digests(step: Step) -> dict[str, str]:
        return {str(p): content_digest(p) for p in step.outputs() if Path(p).is_file()}

    def run(self, steps: list[Step]) -> dict[str, StepResult]:
        names = [s.name for s in steps]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise InputError(f"two steps named {', '.join(map(repr, repeated))}: step names must be unique "
                             f"(a stage may not be named like a recipe step)", field="stages")
        init_from_launch()
        lead = launched_rank_and_world()[0] == 0
        for i, step in enumerate(steps):
            everyone_later = any(not s.rank0_only for s in steps[i + 1:])
            if step.rank0_only and not lead:
                if everyone_later:
                    barrier()  # rank 0 runs it
                continue
            self.results[step.name] = self._run_one(step, lead)
            if step.rank0_only and everyone_later:
                barrier()
        return self.results

    def _run_one(self, step: Step, lead: bool) -> StepResult:
        fingerprint = step.fingerprint()
        stamp = self.done(step, fingerprint)
        if fingerprint is not None and not step.rank0_only:
            # every rank reads the stamp before rank 0 can write it, so all skip or all run (a rank that
            # came late would see rank 0's new stamp, skip, and leave the others in a collective)
            barrier()
        if stamp is not None:
            log.info(f"{step.name}: done before, with the same inputs (steps/{step.name}.json)")
            return StepResult(step.name, stamp["stats"], stamp["seconds"], reused=True)
        start = time.perf_counter()
        stats = step.run(resume=self.resume, show_progress=self.show_progress and lead)
        seconds = round(time.perf_counter() - start, 1)
        if lead:
            write_json(self.stamp_path(step), {"fingerprint": fingerprint, "stats": stats, "seconds": seconds,
                                               "outputs": self.output_digests(step),
                                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return StepResult(step.name, stats, seconds, reused=False)

"""`conan-embed run RECIPE`: the recipe's steps (recipe_steps.py: data -> curate -> stages, with the mine
step after the stage it names -> merge -> final model -> evaluation) run by `StepRunner` into one run folder.

    <output_dir>/
      recipe.yaml           the recipe as run (after --set overrides)
      steps/<step>.json     each finished step's stamp: fingerprint, stats, seconds, output digests (steps.py)
      <stage>/              each stage's model, checkpoints, log.jsonl, loss.png, negatives.png (stage_training.py)
      merged/               the merge, when the recipe has one
      model/                the final model: a sentence-transformers folder, loadable without conan_embed
      eval/<model>/dim-<d>/ eval.json of each evaluated model at each dim
      loss.png              the loss curves of all stages, one after the other
      metrics.json          every step's stats where its `record` puts them (every score printed, stage
                            summaries, the mining and merge summaries), the base model folder, timings
      report.md             the parts that ran, each step's section, base vs each model at each dim

A run is resumable as a whole: `--resume` skips finished steps whose inputs did not change and continues an
interrupted stage from its last checkpoint.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from conan_embed.errors import InputError
from conan_embed.files import write_json, write_text_atomic
from conan_embed.logs import get_logger
from conan_embed.recipe.recipe_steps import recipe_steps
from conan_embed.recipe.run_report import write_report
from conan_embed.recipe.schema import Recipe
from conan_embed.recipe.stage_training import init_model_path, stage_paths
from conan_embed.recipe.steps import StepRunner
from conan_embed.training.launch import init_from_launch, launched_rank_and_world

log = get_logger("run")


def prepare_run_folder(recipe: Recipe, *, resume: bool, overwrite: bool) -> Path:
    """The run folder, emptied on `overwrite` (but a data build inside it), refused when it holds a run and
    neither `resume` nor `overwrite` is given; writes recipe.yaml."""
    run_dir = Path(recipe.output_dir)
    if overwrite and run_dir.exists():
        data_dir = Path(recipe.data.dir).resolve()
        for child in run_dir.iterdir():  # keep a data build that lives inside the run folder
            if not data_dir.is_relative_to(child.resolve()):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    if not resume:  # fail before building data or overwriting recipe.yaml
        for name in recipe.stages:
            root = stage_paths(recipe, name).root
            if root.is_dir() and any(root.iterdir()):
                raise InputError(f"{run_dir} already holds a run (stage {name!r}); pass --resume to continue "
                                 f"it or --overwrite to start again", path=root)
    run_dir.mkdir(parents=True, exist_ok=True)
    # without the loader-set `source` fields (recipe file, curation section), so that it loads again
    data = asdict(recipe, dict_factory=lambda items: {k: v for k, v in items if k != "source"})
    write_text_atomic(run_dir / "recipe.yaml", yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return run_dir


def collect_metrics(steps, results: dict) -> dict:
    """metrics.json's sections from the steps' stats, each where the step's `record` says; timings per step."""
    metrics: dict = {"curation": None, "mining": None, "stages": {}, "merge": None, "eval": {}}
    for step in steps:
        if step.name in results and step.record:
            *parents, key = step.record
            target = metrics
            for parent in parents:
                target = target.setdefault(parent, {})
            target[key] = step.recorded(results[step.name].stats)
    timings = {f"{name}_s": r.seconds for name, r in results.items() if name != "evaluate"}
    if "evaluate" in results:
        timings.update({f"eval_{label}_s": s for label, s in results["evaluate"].stats["seconds"].items()})
    return {**metrics, "timings": timings}


def run_recipe(recipe: Recipe, *, resume: bool = False, overwrite: bool = False, evaluate: bool = True,
               show_progress: bool = True) -> dict | None:
    """Run the whole recipe; returns metrics.json's content.

    Launched on several processes (torchrun, `--nproc`), every process runs the same steps: rank 0 alone
    builds data, curates, merges, evaluates and writes the report; every process trains and encodes its
    shard for mining; the others return None."""
    init_from_launch()
    lead = launched_rank_and_world()[0] == 0
    start = time.perf_counter()
    run_dir = prepare_run_folder(recipe, resume=resume, overwrite=overwrite) if lead else Path(recipe.output_dir)
    steps = recipe_steps(recipe, evaluate=evaluate, overwrite=overwrite)
    results = StepRunner(run_dir, resume=resume, show_progress=show_progress).run(steps)
    if not lead:
        return None
    collected = collect_metrics(steps, results)
    collected["timings"]["total_s"] = round(time.perf_counter() - start, 1)
    base_path = Path(init_model_path(recipe, next(iter(recipe.stages))))
    stages = collected["stages"]
    metrics = {
        "recipe": recipe.name,
        "recipe_file": recipe.source,
        "base_model": str(base_path),
        "final_model": str(run_dir / "model"),
        "models": {"base": str(base_path), **{n: s["model"] for n, s in stages.items()}},
        "eval_settings": asdict(recipe.eval),
        **collected,
        "steps": {name: {"seconds": r.seconds, "reused": r.reused} for name, r in results.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(run_dir / "metrics.json", metrics)
    write_report(metrics, recipe, [step.report(results[step.name].stats) for step in steps], run_dir / "report.md")
    log.info(f"done in {metrics['timings']['total_s'] / 60:.1f} min: {run_dir / 'report.md'}, final model in "
             f"{run_dir / 'model'}")
    return metrics

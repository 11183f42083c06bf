"""The steps of a recipe run (conan_embed.recipe.steps): data -> curate -> check-data -> each stage (with
`mine` after the stage it names) -> merge -> final-model -> evaluate. `recipe_steps(recipe)` lists them;
`run_recipe` (runner.py) runs the list and writes metrics.json and report.md from the steps' stats.

Each step's `record` says where its stats go in metrics.json ("stages", "pretrain" -> metrics["stages"]
["pretrain"]); its `report` writes its own section of report.md.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from conan_embed.curate import curate
from conan_embed.data.builders import BUILDER_VERSION, build_all
from conan_embed.errors import InputError
from conan_embed.evaluation import run_cmteb, run_suite
from conan_embed.evaluation.sizes import get_size
from conan_embed.files import write_json
from conan_embed.logs import get_logger
from conan_embed.merging import merge_examples, merge_models
from conan_embed.mining import mine
from conan_embed.model_loading import load_embedder
from conan_embed.recipe import run_report
from conan_embed.recipe.schema import Recipe
from conan_embed.recipe.stage_training import init_model_path, stage_paths, train_stage
from conan_embed.recipe.steps import Step
from conan_embed.training.callbacks import plot_loss_curve, read_log
from conan_embed.training.launch import barrier, launched_rank_and_world

log = get_logger("run")


def prepare_data(recipe: Recipe) -> dict | None:
    """Build the shipped training files into data.dir unless it already holds a build."""
    folder = Path(recipe.data.dir)
    manifest = folder / "manifest.json"
    if manifest.is_file():
        version = json.loads(manifest.read_text()).get("builder_version")
        if recipe.data.build and version != BUILDER_VERSION:
            raise InputError(f"built by builder version {version}, this conan-embed writes version "
                             f"{BUILDER_VERSION} (the held-out evaluation articles changed, docs/forgetting.md); "
                             f"delete {folder} to rebuild it",
                             path=manifest)
        return None
    if not recipe.data.build:
        return None

    log.info(f"building the training data into {folder}")
    return build_all(folder)


def check_data_files(recipe: Recipe) -> None:
    """Every data file any stage names must exist before the first stage starts (but the one the
    recipe's mine step writes)."""
    mined = recipe.mine.output if recipe.mine is not None else None
    if recipe.mine is not None:
        for key in ("input", "corpus"):
            rel = getattr(recipe.mine, key)
            if not recipe.data_file(rel).exists():
                raise InputError(f"mine.{key}: no such data file (data.dir is {recipe.data.dir})",
                                 path=recipe.data_file(rel), field=f"mine.{key}")
    for name, stage in recipe.stages.items():
        for tname, task in stage.tasks.items():
            for key, rel in (("file", task.file), ("corpus", task.corpus)):
                if rel is not None and rel != mined and not recipe.data_file(rel).exists():
                    raise InputError(f"stages.{name}.tasks.{tname}.{key}: no such data file "
                                     f"(data.dir is {recipe.data.dir})", path=recipe.data_file(rel),
                                     field=f"stages.{name}.tasks.{tname}.{key}")


def curate_data(recipe: Recipe, *, overwrite: bool, show_progress: bool) -> dict | None:
    """Run the recipe's curation into data.dir (a finished one with the same settings is reused)."""
    if recipe.curate is None:
        return None

    c = recipe.curate
    log.info(f"curating {', '.join(c.input)} into {recipe.data_file(c.output)}")
    return curate([recipe.data_file(p) for p in c.input], recipe.data_file(c.output), c, overwrite=overwrite,
                  show_progress=show_progress)


def mining_model(recipe: Recipe) -> Path | str:
    """What `mine.model` names: the base ("model"), a stage's model or a folder / shipped name."""
    m = recipe.mine
    if m.model == "model":
        return init_model_path(recipe, next(iter(recipe.stages)))
    return stage_paths(recipe, m.model).model if m.model in recipe.stages else m.model


def mine_candidates(recipe: Recipe, *, show_progress: bool, rank: int = 0, world: int = 1) -> dict | None:
    """The recipe's mine step: rank mine.corpus for mine.input's rows with mine.model (the base, a
    finished stage's model or a folder). Embeddings are cached, so a resumed run re-mines in seconds. In
    several processes each encodes its shard and rank 0 writes (`mine`); the others return None."""
    m, model = recipe.mine, mining_model(recipe)
    if rank == 0:
        log.info(f"mining candidates for {m.input} with {model}" + f" on {world} processes" * (world > 1))
    return mine(model, recipe.data_file(m.input), recipe.data_file(m.corpus), recipe.data_file(m.output), m,
                show_progress=show_progress, rank=rank, world=world)


def files_stamp(path: Path) -> dict:
    """Identifies a file's or folder's content cheaply: its files' sizes and mtimes."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)) if p != path else p.name: [p.stat().st_size, p.stat().st_mtime_ns]
            for p in files}


def evaluate_model(label: str, model_path: Path, recipe: Recipe, run_dir: Path, *, resume: bool) -> dict:
    """Evaluate one model at every recipe dim, encoding each text once; cached in eval/<label>/."""
    cfg = recipe.eval
    # the builder version names the evaluation sets, the size's settings how they are scored: a split or a
    # size that changed is scored again
    stamp = {"model": str(model_path), "files": files_stamp(model_path), "suite": cfg.suite,
             "size": get_size(cfg.size).to_dict() if cfg.suite == "local" else cfg.size,
             "split": cfg.split, "sets": BUILDER_VERSION,
             "precision": cfg.precision, "batch_size": cfg.batch_size, "tasks": cfg.tasks}
    results, model, cache = {}, None, {}
    for dim in cfg.dims:
        folder = run_dir / "eval" / label / f"dim-{dim or 'full'}"
        done = folder / "eval.json"
        if resume and done.is_file() and (folder / "stamp.json").is_file() \
                and json.loads((folder / "stamp.json").read_text()) == stamp:
            results[dim] = json.loads(done.read_text())
            continue
        if model is None:
            model = load_embedder(model_path)
        if dim is not None and dim > model.get_embedding_dimension():
            log.info(f"skipping {label} at dim {dim}: it has only {model.get_embedding_dimension()} dims")
            continue
        log.info(f"evaluating {label} ({model_path}) at dim {dim or model.get_embedding_dimension()}")
        if cfg.suite == "cmteb":
            results[dim] = run_cmteb(model, dim=dim, tasks=cfg.tasks, data_dir=cfg.data_dir, output_dir=folder,
                                     batch_size=cfg.batch_size, precision=cfg.precision)
        else:
            results[dim] = run_suite(model, size=cfg.size, dim=dim, output_dir=folder, batch_size=cfg.batch_size,
                                     precision=cfg.precision, embedding_cache=cache, tasks=cfg.tasks, split=cfg.split)
        write_json(folder / "stamp.json", stamp)
    return results


def _scores(result: dict) -> dict:
    return {"avg": result["avg"], "categories": result["categories"],
            "tasks": {n: {"category": e["category"], "metric": e["legacy"]["metric"], "score": e["legacy"]["score"],
                          "size": {"split": e["legacy"]["split"]}} if "legacy" in e else
                      {"category": e["category"], "metric": e["main_metric"], "score": e["main_score"],
                       "size": e["size"]} for n, e in result["tasks"].items()},
            "guard": {n: e["main_score"] for n, e in (result.get("guard") or {}).items()},
            "embedding_dim": result["embedding_dim"], "seconds": result["seconds"]}


class DataStep(Step):
    """The shipped training files, built into data.dir unless it holds a build (that check is the resume)."""

    name = "data"

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    def outputs(self):
        return [Path(self.recipe.data.dir)] if self.recipe.data.build else []

    def run(self, *, resume, show_progress):
        return {"built": prepare_data(self.recipe) is not None, "dir": self.recipe.data.dir}


class CurateStep(Step):
    """The recipe's curation (docs/curation.md); it resumes by itself, shard by shard."""

    name = "curate"
    record = ("curation",)

    def __init__(self, recipe: Recipe, *, overwrite: bool):
        self.recipe, self.overwrite = recipe, overwrite

    def inputs(self):
        return [self.recipe.data_file(p) for p in self.recipe.curate.input]

    def outputs(self):
        return [self.recipe.data_file(self.recipe.curate.output) / "stats.json"]

    def run(self, *, resume, show_progress):
        stats = curate_data(self.recipe, overwrite=self.overwrite, show_progress=show_progress)
        return {k: stats[k] for k in ("inputs", "output", "rows_in", "kept", "table", "dedup", "teacher", "timings")}

    def report(self, stats):
        return run_report.curation_section(stats, self.recipe)


class CheckDataStep(Step):
    """Every data file the stages name exists, before the first stage starts (fails in seconds, not hours)."""

    name = "check-data"

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    def run(self, *, resume, show_progress):
        check_data_files(self.recipe)
        return {}


class TrainStageStep(Step):
    """One training stage on every process. No fingerprint here: `train_stage` itself returns a finished
    stage whose fingerprint (settings, init model, data digests) is unchanged, resumes an interrupted one
    from its checkpoints and names the changed keys otherwise (hashing the data once, not twice)."""

    rank0_only = False

    def __init__(self, recipe: Recipe, name: str, *, step_name: str | None = None):
        self.recipe, self.stage = recipe, name
        self.name = step_name or name  # several runs' stages in one list (the ablation's rows) need their own
        self.record = ("stages", name)

    def inputs(self):
        return [Path(self.recipe.data_file(t.file)) for t in self.recipe.stages[self.stage].tasks.values()]

    def outputs(self):
        paths = stage_paths(self.recipe, self.stage)
        return [paths.model, paths.summary]

    def run(self, *, resume, show_progress):
        log.info(f"stage {self.stage}: {self.recipe.stages[self.stage].max_steps} steps")
        summary = train_stage(self.recipe, self.stage, resume=resume, show_progress=show_progress)
        return {k: v for k, v in summary.items() if k != "fingerprint"}

    def report(self, stats):
        return run_report.stage_section(stats)


class MineStep(Step):
    """Hard-negative candidates ranked by a model (`mine:`), after the stage whose model it uses. Every
    process encodes its shard of the texts (the stage before it saved the model and waited for all)."""

    name = "mine"
    rank0_only = False
    record = ("mining",)

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    def inputs(self):
        m = self.recipe.mine
        return [self.recipe.data_file(m.input), self.recipe.data_file(m.corpus)]

    def outputs(self):
        return [self.recipe.data_file(self.recipe.mine.output)]

    def fingerprint(self):
        model = Path(mining_model(self.recipe))
        return {"config": asdict(self.recipe.mine), "model": str(model),
                "files": {str(p): files_stamp(p) for p in [*self.inputs(), model] if p.exists()}}

    def run(self, *, resume, show_progress):
        rank, world = launched_rank_and_world()
        stats = mine_candidates(self.recipe, show_progress=show_progress, rank=rank, world=world)
        barrier()  # the steps after it read what rank 0 wrote last
        return stats

    def report(self, stats):
        return run_report.mining_section(stats)


class MergeStep(Step):
    """LM-Cocktail: the recipe's `merge.models` averaged into <run>/merged (docs/forgetting.md)."""

    name = "merge"
    record = ("merge",)

    def __init__(self, recipe: Recipe, base_path: Path, run_dir: Path):
        self.recipe, self.out = recipe, run_dir / "merged"
        self.paths = [base_path if n == "model" else stage_paths(recipe, n).model for n in recipe.merge.models]

    def outputs(self):
        return [self.out / "merge.json"]

    def fingerprint(self):
        return {"config": asdict(self.recipe.merge), "models": {str(p): files_stamp(p) for p in self.paths}}

    def run(self, *, resume, show_progress):
        cfg = self.recipe.merge
        if self.out.exists():
            shutil.rmtree(self.out)
        examples = None if cfg.weights is not None else merge_examples(cfg.examples_per_task, seed=self.recipe.seed)
        log.info(f"merging {', '.join(cfg.models)}" + (f" with weights {cfg.weights}" if cfg.weights else
                                                       " with few-shot weights"))
        return merge_models(self.paths, self.out, weights=cfg.weights, examples=examples, temperature=cfg.temperature,
                            names=cfg.models, show_progress=show_progress)

    def report(self, stats):
        return run_report.merge_section(stats)


class FinalModelStep(Step):
    """<run>/model: the merged model, or the last stage's; and loss.png over every stage."""

    name = "final-model"

    def __init__(self, recipe: Recipe, run_dir: Path):
        self.recipe, self.run_dir = recipe, run_dir
        merged = recipe.merge is not None
        self.source = run_dir / "merged" if merged else stage_paths(recipe, list(recipe.stages)[-1]).model

    def outputs(self):
        return [self.run_dir / "model"]

    def run(self, *, resume, show_progress):
        final = self.run_dir / "model"
        if final.exists():
            shutil.rmtree(final)
        shutil.copytree(self.source, final)
        plot_loss_curve({n: read_log(stage_paths(self.recipe, n).log) for n in self.recipe.stages},
                        self.run_dir / "loss.png", f"{self.recipe.name}: training loss")
        return {"model": str(final), "from": str(self.source)}


class EvaluateStep(Step):
    """The base, every stage's model and the merged one (or `eval.models` of them) at every `eval.dims`;
    each model and dim is cached in eval/<label>/ with what decides its scores."""

    name = "evaluate"
    record = ("eval",)

    def __init__(self, recipe: Recipe, models: dict[str, Path], run_dir: Path, *, name: str = "evaluate"):
        self.recipe, self.run_dir, self.name = recipe, run_dir, name
        self.models = {k: v for k, v in models.items() if recipe.eval.models is None or k in recipe.eval.models}

    def run(self, *, resume, show_progress):
        scores, seconds = {}, {}
        for label, path in self.models.items():
            start = time.perf_counter()
            results = evaluate_model(label, path, self.recipe, self.run_dir, resume=resume)
            seconds[label] = round(time.perf_counter() - start, 1)
            scores[label] = {f"dim-{d or 'full'}": _scores(r) for d, r in results.items()}
        return {"models": scores, "seconds": seconds, "settings": asdict(self.recipe.eval)}

    def report(self, stats):
        return run_report.evaluation_section(stats["models"], stats["settings"])

    def recorded(self, stats):
        return stats["models"]


def recipe_steps(recipe: Recipe, *, evaluate: bool = True, overwrite: bool = False) -> list[Step]:
    """The recipe's run as steps, in order."""
    run_dir = Path(recipe.output_dir)
    base_path = Path(init_model_path(recipe, next(iter(recipe.stages))))
    mine_after = recipe.mine.model if recipe.mine is not None and recipe.mine.model in recipe.stages else None
    steps: list[Step] = [DataStep(recipe)]
    if recipe.curate is not None:
        steps.append(CurateStep(recipe, overwrite=overwrite))
    steps.append(CheckDataStep(recipe))
    if recipe.mine is not None and mine_after is None:
        steps.append(MineStep(recipe))
    for name in recipe.stages:
        steps.append(TrainStageStep(recipe, name))
        if name == mine_after:
            steps.append(MineStep(recipe))
    if recipe.merge is not None:
        steps.append(MergeStep(recipe, base_path, run_dir))
    steps.append(FinalModelStep(recipe, run_dir))
    if evaluate and recipe.eval.enabled:
        models = {"base": base_path, **{n: stage_paths(recipe, n).model for n in recipe.stages},
                  **({"merged": run_dir / "merged"} if recipe.merge is not None else {})}
        steps.append(EvaluateStep(recipe, models, run_dir))
    return steps

"""`conan-embed run RECIPE`: build-data -> curate -> stages (with the mine step after the stage it
names) -> evaluation -> one run folder.

    <output_dir>/
      recipe.yaml           the recipe as run (after --set overrides)
      <stage>/              each stage's model, checkpoints, log.jsonl, loss.png, negatives.png (stage.py)
      model/                the final model: a sentence-transformers folder, loadable without conan_embed
      eval/<model>/dim-<d>/ eval.json of each evaluated model at each dim
      loss.png              the loss curves of all stages, one after the other
      metrics.json          every score printed, the base model folder, stage summaries, timings
      report.md             base vs each stage, per category and weighted Avg, at each dim

A run is resumable as a whole: `--resume` skips finished stages and evaluations whose inputs did not
change and continues an interrupted stage from its last checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from conan_embed.curate import curate
from conan_embed.data.builders import BUILDER_VERSION, build_all
from conan_embed.errors import InputError
from conan_embed.evaluation import run_cmteb, run_suite
from conan_embed.evaluation.sizes import get_size
from conan_embed.files import write_json, write_text_atomic
from conan_embed.logs import get_logger
from conan_embed.merging import merge_examples, merge_models
from conan_embed.mining import mine
from conan_embed.model_loading import load_embedder
from conan_embed.recipe.run_report import write_report
from conan_embed.recipe.schema import Recipe
from conan_embed.recipe.stage_training import init_model_path, stage_paths, train_stage
from conan_embed.training.callbacks import plot_loss_curve, read_log
from conan_embed.training.launch import barrier, init_from_launch, launched_rank_and_world


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


def mine_candidates(recipe: Recipe, *, show_progress: bool) -> dict:
    """The recipe's mine step: rank mine.corpus for mine.input's rows with mine.model (the base, a
    finished stage's model or a folder). Embeddings are cached, so a resumed run re-mines in seconds."""
    m = recipe.mine
    if m.model == "model":
        model = init_model_path(recipe, next(iter(recipe.stages)))
    elif m.model in recipe.stages:
        model = stage_paths(recipe, m.model).model
    else:
        model = m.model
    log.info(f"mining candidates for {m.input} with {model}")
    return mine(model, recipe.data_file(m.input), recipe.data_file(m.corpus), recipe.data_file(m.output), m,
                show_progress=show_progress)


def merge_stage_models(recipe: Recipe, base_path: Path, run_dir: Path, *, resume: bool,
                       show_progress: bool) -> dict:
    """The recipe's merge step into run_dir/merged (kept on --resume while its inputs are unchanged)."""
    cfg, out = recipe.merge, run_dir / "merged"
    paths = [base_path if name == "model" else stage_paths(recipe, name).model for name in cfg.models]
    stamp = {"config": asdict(cfg), "models": {str(p): _model_stamp(p) for p in paths}}
    if resume and (out / "merge.json").is_file() and (out / "stamp.json").is_file() \
            and json.loads((out / "stamp.json").read_text()) == stamp:
        return json.loads((out / "merge.json").read_text())
    if out.exists():
        shutil.rmtree(out)
    examples = None if cfg.weights is not None else merge_examples(cfg.examples_per_task, seed=recipe.seed)
    log.info(f"merging {', '.join(cfg.models)}" + (f" with weights {cfg.weights}" if cfg.weights else
                                               " with few-shot weights"))
    info = merge_models(paths, out, weights=cfg.weights, examples=examples, temperature=cfg.temperature,
                        names=cfg.models, show_progress=show_progress)
    write_json(out / "stamp.json", stamp)
    return info


def _model_stamp(path: Path) -> dict:
    """Identifies a model folder's content cheaply: its files' sizes and mtimes."""
    files = sorted(p for p in Path(path).rglob("*") if p.is_file())
    return {str(p.relative_to(path)): [p.stat().st_size, p.stat().st_mtime_ns] for p in files}


def evaluate_model(label: str, model_path: Path, recipe: Recipe, run_dir: Path, *, resume: bool) -> dict:
    """Evaluate one model at every recipe dim, encoding each text once; cached in eval/<label>/."""
    cfg = recipe.eval
    # the builder version names the evaluation sets, the size's settings how they are scored: a split or a
    # size that changed is scored again
    stamp = {"model": str(model_path), "files": _model_stamp(model_path), "suite": cfg.suite,
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


def run_recipe(recipe: Recipe, *, resume: bool = False, overwrite: bool = False, evaluate: bool = True,
               show_progress: bool = True) -> dict | None:
    """Run the whole recipe; returns metrics.json's content.

    Launched on several processes (torchrun, `--nproc`), every process trains and rank 0 alone builds
    data, curates, mines, evaluates and writes the report; the others wait for it and return None."""
    init_from_launch()
    mine_after = recipe.mine.model if recipe.mine is not None and recipe.mine.model in recipe.stages else None
    if launched_rank_and_world()[0] != 0:
        barrier()  # rank 0 prepares the folder and the data
        for name in [None, *recipe.stages]:
            if name is not None:
                train_stage(recipe, name, resume=resume, show_progress=False)
            if recipe.mine is not None and name == mine_after:
                barrier()  # rank 0 mines
        return None
    start = time.perf_counter()
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
    timings = {}

    t0 = time.perf_counter()
    prepare_data(recipe)
    timings["data_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    curation = curate_data(recipe, overwrite=overwrite, show_progress=show_progress)
    if curation is not None:
        timings["curate_s"] = round(time.perf_counter() - t0, 1)
    check_data_files(recipe)
    barrier()

    base_path = Path(init_model_path(recipe, next(iter(recipe.stages))))
    stages, mining = {}, None
    for name in [None, *recipe.stages]:
        if name is not None:
            log.info(f"stage {name}: {recipe.stages[name].max_steps} steps")
            t0 = time.perf_counter()
            summary = train_stage(recipe, name, resume=resume, show_progress=show_progress)
            timings[f"{name}_s"] = round(time.perf_counter() - t0, 1)
            stages[name] = {k: v for k, v in summary.items() if k != "fingerprint"}
        if recipe.mine is not None and name == mine_after:
            t0 = time.perf_counter()
            mining = mine_candidates(recipe, show_progress=show_progress)
            timings["mine_s"] = round(time.perf_counter() - t0, 1)
            barrier()
    merge = None
    if recipe.merge is not None:
        t0 = time.perf_counter()
        merge = merge_stage_models(recipe, base_path, run_dir, resume=resume, show_progress=show_progress)
        timings["merge_s"] = round(time.perf_counter() - t0, 1)
    final_stage = list(recipe.stages)[-1]
    final = run_dir / "model"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(run_dir / "merged" if merge else stage_paths(recipe, final_stage).model, final)
    plot_loss_curve({n: read_log(stage_paths(recipe, n).log) for n in recipe.stages}, run_dir / "loss.png",
                    f"{recipe.name}: training loss")

    evaluations = {}
    if evaluate and recipe.eval.enabled:
        models = {"base": base_path, **{n: stage_paths(recipe, n).model for n in recipe.stages},
                  **({"merged": run_dir / "merged"} if merge else {})}
        if recipe.eval.models is not None:
            models = {label: path for label, path in models.items() if label in recipe.eval.models}
        for label, path in models.items():
            t0 = time.perf_counter()
            results = evaluate_model(label, path, recipe, run_dir, resume=resume)
            timings[f"eval_{label}_s"] = round(time.perf_counter() - t0, 1)
            evaluations[label] = {f"dim-{d or 'full'}": _scores(r) for d, r in results.items()}
    timings["total_s"] = round(time.perf_counter() - start, 1)
    metrics = {
        "recipe": recipe.name,
        "recipe_file": recipe.source,
        "base_model": str(base_path),
        "final_model": str(final),
        "models": {"base": str(base_path), **{n: s["model"] for n, s in stages.items()}},
        "eval_settings": asdict(recipe.eval),
        "eval": evaluations,
        "curation": curation and {k: curation[k] for k in ("inputs", "output", "rows_in", "kept", "table", "dedup",
                                                           "teacher", "timings")},
        "mining": mining,
        "stages": stages,
        "merge": merge,
        "timings": timings,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(run_dir / "metrics.json", metrics)

    write_report(metrics, recipe, run_dir / "report.md")
    log.info(f"done in {timings['total_s'] / 60:.1f} min: {run_dir / 'report.md'}, final model in {final}")
    return metrics

"""`run_cmteb`: score a model on the real C-MTEB datasets through mteb v2 (docs/evaluation.md, "C-MTEB").

Every dataset runs once, on the splits both summaries need (cmteb_tasks.py), through the same
`SuiteEncoder` as the local suite: the model's own query/passage prompts (and its `symmetric_prompt`
on the symmetric task types), Matryoshka truncation to `dim`, L2-normalised embeddings.

Resumable: each finished dataset's mteb result is saved as `output_dir/mteb/<task>.json`, and
`output_dir/stamp.json` records what produced them (the model's files or parameters, dim, precision,
prompt setting, mteb version). A later call with the same stamp skips those datasets, so an
interrupted run continues with the rest; a call with another stamp discards them first, so results of
two models never mix. `batch_size` is not in the stamp: it changes speed and memory, not scores
(retrying with a smaller batch after running out of GPU memory keeps what is done).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from conan_embed.errors import InputError
from conan_embed.evaluation.cmteb_data import DataSource, fetch, locate
from conan_embed.evaluation.cmteb_tasks import (
    CATEGORIES,
    LEGACY,
    TaskPlan,
    legacy_summary,
    plan_tasks,
    task_scores,
    v2_summary,
    v2_tasks,
)
from conan_embed.evaluation.suite import (
    EXTRA_SCORES,
    METRIC_LABELS,
    PRECISIONS,
    _load_model,
    _log,
    _num,
    _quiet,
)
from conan_embed.files import write_json, write_text_atomic
from conan_embed.model_loading import ModelSource, resolve_model
from conan_embed.modeling import check_truncate_dim


def _model_identity(model) -> dict:
    """What the results depend on, without loading a model folder: a digest of its files' names,
    sizes and mtimes; for a model in memory, a digest of its parameters (plus prompts and length cap,
    which live outside them)."""
    if isinstance(model, (str, Path, ModelSource)):
        resolved = resolve_model(Path(model).expanduser() if isinstance(model, Path) else model).location
        if not isinstance(resolved, Path):
            return {"hub_id": resolved}
        digest = hashlib.sha256()
        for p in sorted(q for q in resolved.rglob("*") if q.is_file()):
            digest.update(f"{p.relative_to(resolved)}\0{p.stat().st_size}\0{p.stat().st_mtime_ns}\n".encode())
        return {"path": str(resolved.resolve()), "files": digest.hexdigest()}
    import torch

    digest = hashlib.sha256()
    with torch.no_grad():  # sums in float64 per tensor: no copy of the whole model
        for name, t in model.state_dict().items():
            t = t.detach()
            digest.update(f"{name}{tuple(t.shape)}{t.sum(dtype=torch.float64).item():.12e}"
                          f"{t.float().square().sum(dtype=torch.float64).item():.12e}".encode())
    return {"parameters": digest.hexdigest(), "prompts": getattr(model, "prompts", None),
            "max_seq_length": getattr(model, "max_seq_length", None)}


def _previous(output_dir: Path, plans: list[TaskPlan], stamp: dict) -> tuple[dict, list[Path]]:
    """(task -> mteb TaskResult of each dataset a run with this stamp finished, stale result files)."""
    results = output_dir / "mteb"
    files = sorted(p for p in results.glob("*.json") if p.stem in LEGACY) if results.is_dir() else []
    try:
        same = json.loads((output_dir / "stamp.json").read_text()) == stamp
    except (OSError, ValueError):  # none yet, or not ours
        same = False
    if not same:
        return {}, files
    from mteb.results import TaskResult

    done = {}
    for plan in plans:
        try:
            done[plan.name] = TaskResult.from_disk(results / f"{plan.name}.json")
            task_scores(plan, done[plan.name].scores)  # every split this plan needs is there
        except (OSError, ValueError, KeyError):
            done.pop(plan.name, None)  # not run yet, or from an older plan: run it
    return done, []


def _mteb_task(plan: TaskPlan, source: DataSource):
    """The mteb task on the plan's splits and subset, its data read from the source's local folder."""
    import mteb

    folder = fetch(source)
    task = mteb.get_task(plan.name, eval_splits=list(plan.splits), hf_subsets=[plan.legacy.hf_subset])
    # an instance copy: the class's metadata is shared by every instance of the task
    task.metadata = task.metadata.model_copy(update={"dataset": {**task.metadata.dataset, "path": str(folder)}})
    try:
        task.load_data()
    except Exception as exc:  # datasets and mteb raise many kinds for a folder that is not the repo
        raise InputError(f"{plan.name}: can't read {source.repo} (revision {source.revision}) from this folder: "
                         f"{type(exc).__name__}: {exc}", path=folder) from exc
    return task


def _entry(plan: TaskPlan, result, origin: str, seconds: float | None = None) -> dict:
    """One dataset's eval.json entry from its mteb TaskResult."""
    wanted = EXTRA_SCORES[plan.legacy.category]
    seconds = result.evaluation_time if seconds is None else seconds
    return {
        "category": plan.legacy.category,
        "hf_subset": plan.legacy.hf_subset,
        **task_scores(plan, result.scores),
        "scores": {split: {k: _num(row[k]) for k in wanted if k in row}
                   for split, rows in result.scores.items() for row in rows
                   if row.get("hf_subset") == plan.legacy.hf_subset},
        "seconds": round(seconds, 2) if seconds is not None else None,
        "data": origin,
    }


def run_cmteb(
    model,
    *,
    dim: int | None = None,
    tasks=None,
    data_dir: str | Path | None = None,
    output_dir: str | Path = "eval-cmteb",
    batch_size: int = 32,
    precision: str = "fp32",
    symmetric_prompt: str | None = "query",
    show_progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `model` (a model folder, shipped name, hub id or loaded SentenceTransformer) on C-MTEB.

    tasks: task names or categories (list or comma-separated string); None = all 35 datasets.
    data_dir: a folder with one mirror per dataset repo, `data_dir/<repo id>` (e.g.
        `data_dir/C-MTEB/OCNLI`); datasets not there come from the Hugging Face cache, or the hub.
    output_dir: eval.json (both summaries), eval.txt, stamp.json and mteb/<task>.json (per dataset).
    symmetric_prompt, precision, dim: as in `run_suite`.
    Returns the eval.json content.
    """
    start = time.perf_counter()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}", field="batch_size")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}", field="precision")
    plans = plan_tasks(tasks)
    output_dir = Path(output_dir)
    loaded = None if isinstance(model, (str, Path)) else _load_model(model)  # checks what was passed
    import mteb

    stamp = {"model": _model_identity(model), "dim": dim, "precision": precision,
             "symmetric_prompt": symmetric_prompt, "mteb_version": mteb.__version__}
    done, stale = _previous(output_dir, plans, stamp)
    todo = [p for p in plans if p.name not in done]
    # before the model loads: every missing dataset is named at once, in seconds
    sources = locate({p.name: _dataset(p) for p in todo}, data_dir) if todo else {}

    st_model, model_path, model_name = loaded or _load_model(model)
    dim = check_truncate_dim(dim, st_model.get_embedding_dimension())
    if stale:
        _log(show_progress, f"discarding {len(stale)} results in {output_dir / 'mteb'} from another model or settings")
        for f in stale:
            f.unlink()
    write_json(output_dir / "stamp.json", stamp)
    (output_dir / "mteb").mkdir(parents=True, exist_ok=True)
    out_dim = dim or st_model.get_embedding_dimension()
    _log(show_progress, f"conan-embed eval --suite cmteb: {model_name} | dim {out_dim} | {len(plans)} datasets, "
                        f"{len(done)} done earlier")

    from mteb.results import TaskResult

    from conan_embed.evaluation.encoder import SuiteEncoder

    entries: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet(show_progress))
        # mteb calls STS22, MultilingualSentiment and the clustering tasks "superseded": C-MTEB and
        # MTEB(cmn, v1) are defined on exactly these versions, so the advice to switch would mislead
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message=".*superseded.*")
        abstask_log = logging.getLogger("mteb.abstasks.abstask")
        abstask_log.addFilter(_not_superseded)
        stack.callback(abstask_log.removeFilter, _not_superseded)
        if precision == "bf16":
            import torch

            stack.enter_context(torch.autocast(str(st_model.device).split(":")[0], dtype=torch.bfloat16))
        # no embedding cache: C-MTEB's corpora would hold gigabytes of embeddings in memory
        encoder = SuiteEncoder(st_model, dim=dim, symmetric_prompt=symmetric_prompt, show_progress=show_progress,
                               cache=False)
        for i, plan in enumerate(plans, 1):
            path = output_dir / "mteb" / f"{plan.name}.json"
            if plan.name in done:
                entries[plan.name] = _entry(plan, done[plan.name], "earlier run")
                _log(show_progress, f"[{i}/{len(plans)}] {plan.name}: done earlier, "
                                    f"{_label(plan)} {entries[plan.name]['legacy']['score']:.4f}")
                continue
            source = sources[plan.name]
            _log(show_progress, f"[{i}/{len(plans)}] {plan.name} ({plan.legacy.category}): {', '.join(plan.splits)} "
                                f"from {source.origin} {source.path or source.repo}")
            t0 = time.perf_counter()
            task = _mteb_task(plan, source)
            run = mteb.evaluate(encoder, task, cache=None, co2_tracker=False, show_progress_bar=False,
                                encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress})
            if run.exceptions:
                raise RuntimeError(f"{plan.name} failed: {run.exceptions[0].exception}")
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            run.task_results[0].to_disk(tmp)
            os.replace(tmp, path)  # a result file is whole or absent: resume trusts it
            # read back: the scores as saved (rounded), as a resumed run will read them
            entries[plan.name] = _entry(plan, TaskResult.from_disk(path), source.origin, time.perf_counter() - t0)
            v2 = entries[plan.name]["v2"]
            _log(show_progress, f"      {_label(plan)} {entries[plan.name]['legacy']['score']:.4f}"
                                + (f", v2 {v2['metric']} {v2['score']:.4f}" if v2 else "")
                                + f" in {time.perf_counter() - t0:.1f}s")

    benchmark = v2_tasks()
    result = {
        "suite": "cmteb",
        "model": model_path,
        "model_name": model_name,
        "dim": dim,
        "embedding_dim": dim or st_model.get_embedding_dimension(),
        "max_seq_length": getattr(st_model, "max_seq_length", None),
        "prompts": encoder.model_prompts,
        "symmetric_prompt": symmetric_prompt,
        "batch_size": batch_size,
        "precision": precision,
        "device": str(getattr(st_model, "device", "")) or None,
        "legacy": (legacy := legacy_summary({n: e["legacy"]["score"] for n, e in entries.items()})),
        # the legacy summary again under the local suite's keys, so forgetting checks, run reports and
        # ablation tables read either suite's eval.json
        "avg": legacy["avg"], "n_datasets": legacy["n_datasets"], "categories": legacy["categories"],
        "mteb_v2": v2_summary({n: e["v2"]["score"] for n, e in entries.items() if e["v2"]},
                              {n: t for n, (_, t, _) in benchmark.items()}, len(benchmark)),
        "tasks": entries,
        "seconds": round(time.perf_counter() - start, 2),
        "mteb_version": mteb.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(output_dir / "eval.json", result)
    write_text_atomic(output_dir / "eval.txt", format_cmteb_table(result) + "\n")
    _log(show_progress, f"done in {result['seconds']:.0f}s; wrote {output_dir / 'eval.json'}")
    return result


def _not_superseded(record: logging.LogRecord) -> bool:
    return "superseded" not in record.getMessage()


def _dataset(plan: TaskPlan) -> tuple[str, str]:
    import mteb

    meta = mteb.get_task(plan.name).metadata
    return meta.dataset["path"], meta.dataset["revision"]


def _label(plan: TaskPlan) -> str:
    return f"legacy {METRIC_LABELS.get(plan.legacy.metric, plan.legacy.metric)}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def format_cmteb_table(result: dict[str, Any]) -> str:
    """Per-dataset scores and both summaries (x100, as C-MTEB tables print them)."""
    rows = [("task", "category", "legacy", "split", "metric", "v2", "v2 splits", "time")]
    for name, e in result["tasks"].items():
        v2 = e["v2"]
        rows.append((name, e["category"], _pct(e["legacy"]["score"]), e["legacy"]["split"], e["legacy"]["metric"],
                     _pct(v2["score"]) if v2 else "-", "+".join(v2["splits"]) if v2 else "-",
                     f"{e['seconds']:.0f}s" if e["seconds"] is not None else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    align = "<<><<><>"
    lines = [(f"model {result['model_name']}  dim {result['embedding_dim']}  precision {result['precision']}  "
              f"mteb {result['mteb_version']}")]
    lines += ["  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)).rstrip() for r in rows]
    lines.insert(2, "  ".join("-" * w for w in widths))
    lg, v2 = result["legacy"], result["mteb_v2"]
    lines.append(f"Legacy C-MTEB Avg (mean over datasets): {_pct(lg['avg'])} over {lg['n_datasets']}/"
                 f"{lg['expected_datasets']} datasets" + ("" if lg["complete"] else "  (incomplete)"))
    lines.append("  " + "  ".join(f"{c} {_pct(lg['categories'][c])} ({lg['datasets_per_category'][c]})"
                                  for c in CATEGORIES if c in lg["categories"]))
    lines.append(f"mteb v2 {v2['benchmark']}: Mean (Task) {_pct(v2['mean_task'])}  Mean (TaskType) "
                 f"{_pct(v2['mean_task_type'])} over {v2['n_tasks']}/{v2['expected_tasks']} tasks"
                 + ("" if v2["complete"] else "  (incomplete)"))
    lines.append("  " + "  ".join(f"{t} {_pct(s)}" for t, s in v2["task_types"].items()))
    lines.append(f"total {result['seconds']:.0f}s")
    return "\n".join(lines)

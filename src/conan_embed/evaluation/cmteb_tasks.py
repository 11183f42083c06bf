"""C-MTEB's datasets and the two ways of summarising them (docs/evaluation.md, "C-MTEB").

1. **Legacy C-MTEB** (the "Avg" of the C-Pack and Conan-Embedding papers and of FlagEmbedding's tables,
   e.g. bge-large-zh-v1.5 64.53, Conan-embedding-v1 72.62): 35 datasets, the mean over datasets (not
   over categories). The definitions below follow FlagEmbedding's `C_MTEB/C_MTEB/tasks/*.py` and
   `C_MTEB/summarize_results.py` at commit de8f464 (2023-09-12, the bge v1.5 release), which ran every
   mteb 1.x task with language zh / zh-CN: the 31 C-MTEB tasks plus the Chinese subsets of
   AmazonReviewsClassification, MassiveIntentClassification, MassiveScenarioClassification and STS22.
   Each task is read on one split: the summary takes the first of test, dev, validation that the
   task ran (the four multilingual tasks ran validation and test in mteb 1.1, so test), and pair
   classification is scored by the average precision of cosine similarity (`cos_sim.ap` there,
   `cosine_ap` in mteb v2), not by the best AP over all similarity functions.
2. **mteb v2's `MTEB(cmn, v1)`** (31 tasks, the leaderboard's numbers): each task's own main score
   averaged over its benchmark eval splits (MultilingualSentiment: validation and test), then
   "Mean (Task)" over the tasks and "Mean (TaskType)", the mean of the per-type means.

Scores are in 0-1 here; tables print them x100.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from conan_embed.errors import ConanEmbedError, InputError

V2_BENCHMARK = "MTEB(cmn, v1)"
# FlagEmbedding's table order (Avg | Retrieval | STS | PairClassification | Classification | Reranking | Clustering)
CATEGORIES = ("Retrieval", "STS", "PairClassification", "Classification", "Reranking", "Clustering")
# the mteb v2 score key that holds the metric legacy C-MTEB reports for each category; reranking's
# "map" of mteb 1.x (AP over each query's candidate list) is map_at_1000 of v2's reranking-as-retrieval
LEGACY_METRIC = {
    "Retrieval": "ndcg_at_10", "STS": "cosine_spearman", "PairClassification": "cosine_ap",
    "Classification": "accuracy", "Reranking": "map_at_1000", "Clustering": "v_measure",
}


@dataclass(frozen=True)
class LegacyTask:
    name: str  # the mteb v2 task name
    category: str
    split: str  # the one split legacy C-MTEB reads
    hf_subset: str = "default"

    @property
    def metric(self) -> str:
        return LEGACY_METRIC[self.category]


def _rows(category: str, *rows) -> tuple[LegacyTask, ...]:
    return tuple(LegacyTask(name, category, split, *subset) for name, split, *subset in rows)


# (task, split[, hf subset]) per category, in FlagEmbedding's order: the split is the one eval_split of
# FlagEmbedding's task definition, or test for the four multilingual tasks (see the module docstring)
LEGACY_TASKS: tuple[LegacyTask, ...] = (
    *_rows("Retrieval", *((n, "dev") for n in (
        "T2Retrieval", "MMarcoRetrieval", "DuRetrieval", "CovidRetrieval", "CmedqaRetrieval", "EcomRetrieval",
        "MedicalRetrieval", "VideoRetrieval"))),
    *_rows("STS", ("ATEC", "test"), ("BQ", "test"), ("LCQMC", "test"), ("PAWSX", "test"), ("STSB", "test"),
           ("AFQMC", "validation"), ("QBQTC", "test"), ("STS22", "test", "zh")),
    *_rows("PairClassification", ("Ocnli", "validation"), ("Cmnli", "validation")),
    *_rows("Classification", ("TNews", "validation"), ("IFlyTek", "validation"),
           ("MultilingualSentiment", "validation"), ("JDReview", "test"), ("OnlineShopping", "test"),
           ("Waimai", "test"),
           ("AmazonReviewsClassification", "test", "zh"), ("MassiveIntentClassification", "test", "zh-CN"),
           ("MassiveScenarioClassification", "test", "zh-CN")),
    *_rows("Reranking", ("T2Reranking", "dev"), ("MMarcoReranking", "dev"), ("CMedQAv1-reranking", "test"),
           ("CMedQAv2-reranking", "test")),
    *_rows("Clustering", *((n, "test") for n in (
        "CLSClusteringS2S", "CLSClusteringP2P", "ThuNewsClusteringS2S", "ThuNewsClusteringP2P"))),
)
LEGACY = {t.name: t for t in LEGACY_TASKS}


@dataclass(frozen=True)
class TaskPlan:
    """What to run for one dataset: the splits both summaries need, in the mteb subset legacy reads."""

    legacy: LegacyTask
    v2_splits: tuple[str, ...] | None  # None: not in MTEB(cmn, v1) (the four multilingual tasks)
    v2_type: str
    main_metric: str  # mteb v2's main score of the task

    @property
    def name(self) -> str:
        return self.legacy.name

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*(self.v2_splits or ()), self.legacy.split)))


@functools.cache
def v2_tasks() -> dict[str, tuple[tuple[str, ...], str, str]]:
    """name -> (eval splits as the benchmark pins them, task type, main score), from the installed mteb."""
    import mteb

    return {t.metadata.name: (tuple(t.eval_splits), t.metadata.type, t.metadata.main_score)
            for t in mteb.get_benchmark(V2_BENCHMARK).tasks}


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "").replace(" ", "")


def plan_tasks(tasks=None) -> list[TaskPlan]:
    """Task names or categories (case-insensitive; a list or a comma-separated string) to plans in
    table order. None = all 35."""
    v2 = v2_tasks()
    if missing := sorted(set(v2) - set(LEGACY)):  # a future mteb that changes the benchmark
        raise ConanEmbedError(f"{V2_BENCHMARK} in this mteb has tasks that legacy C-MTEB lacks: {missing}; "
                              "conan-embed knows the benchmark of mteb 2.26")
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t.strip()]
    chosen = set(LEGACY) if tasks is None else set()
    lookup: dict[str, list[str]] = {_key(t.name): [t.name] for t in LEGACY_TASKS}
    for c in CATEGORIES:
        lookup[_key(c)] = [t.name for t in LEGACY_TASKS if t.category == c]
    for t in tasks or ():
        found = lookup.get(_key(str(t)))
        if found is None:
            raise InputError(f"unknown C-MTEB task {str(t).strip()!r}; expected a category {list(CATEGORIES)} "
                             f"or one of {list(LEGACY)}", field="tasks")
        chosen.update(found)
    if not chosen:
        raise InputError("no task selected", field="tasks")
    plans = []
    for c in CATEGORIES:
        for t in LEGACY_TASKS:
            if t.category == c and t.name in chosen:
                splits, task_type, main = v2.get(t.name, (None, c, LEGACY_METRIC[c]))
                plans.append(TaskPlan(t, splits, task_type, main))
    return plans


def task_scores(plan: TaskPlan, scores: Mapping[str, list[dict]]) -> dict:
    """The legacy and v2 scores of one task from its mteb result (`TaskResult.scores`:
    split -> one dict per hf subset)."""
    def subset(split: str) -> dict:
        for row in scores.get(split, ()):
            if row.get("hf_subset") == plan.legacy.hf_subset:
                return row
        raise KeyError(f"{plan.name}: no {split}/{plan.legacy.hf_subset} scores")

    legacy = subset(plan.legacy.split)
    v2 = None
    if plan.v2_splits is not None:
        per_split = {s: float(subset(s)["main_score"]) for s in plan.v2_splits}
        v2 = {"metric": plan.main_metric, "splits": per_split, "score": sum(per_split.values()) / len(per_split)}
    return {"legacy": {"metric": plan.legacy.metric, "split": plan.legacy.split,
                       "score": float(legacy[plan.legacy.metric])},
            "v2": v2}


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def legacy_summary(scores: Mapping[str, float]) -> dict:
    """Legacy C-MTEB from task name -> legacy score: the mean over datasets (C-MTEB's "Avg") and the
    mean per category. `complete` is False until all 35 datasets are in."""
    if unknown := sorted(set(scores) - set(LEGACY)):
        raise InputError(f"not legacy C-MTEB tasks: {unknown}", field="tasks")
    by_cat = {c: [s for n, s in scores.items() if LEGACY[n].category == c] for c in CATEGORIES}
    return {
        "avg": _mean(scores.values()),
        "n_datasets": len(scores),
        "expected_datasets": len(LEGACY),
        "complete": len(scores) == len(LEGACY),
        "categories": {c: _mean(v) for c, v in by_cat.items() if v},
        "datasets_per_category": {c: len(v) for c, v in by_cat.items() if v},
    }


def v2_summary(scores: Mapping[str, float], task_types: Mapping[str, str], expected: int) -> dict:
    """mteb v2's benchmark means from task name -> task score (main score averaged over the task's eval
    splits): "Mean (Task)" over tasks, "Mean (TaskType)" = the mean of the per-type means."""
    by_type: dict[str, list[float]] = {}
    for name, s in scores.items():
        by_type.setdefault(task_types[name], []).append(s)
    types = {t: _mean(by_type[t]) for t in [*CATEGORIES, *sorted(by_type)] if t in by_type}
    return {
        "benchmark": V2_BENCHMARK,
        "mean_task": _mean(scores.values()),
        "mean_task_type": _mean(types.values()),
        "n_tasks": len(scores),
        "expected_tasks": expected,
        "complete": len(scores) == expected,
        "task_types": types,
    }

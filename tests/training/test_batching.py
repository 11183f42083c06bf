"""Tasks and the sequential composer: texts of a plan, hard-negative windows, determinism, turns."""

from __future__ import annotations

import json

import pytest

from conan_embed.errors import InputError
from conan_embed.recipe.schema import recipe_from_dict
from conan_embed.training.composers import SequentialTasks, deduplicated_batches
from conan_embed.training.training_tasks import StepPlan, load_tasks


@pytest.fixture
def tasks(recipe_dict, train_data):
    recipe = recipe_from_dict(recipe_dict)
    return load_tasks(recipe.stages["finetune"].tasks, train_data)


def test_retrieval_negatives_skip_the_top_candidates(tasks, train_data):
    task = tasks["retrieval"]  # negatives: count 2, skip_top 3
    corpus = {str(r["id"]): r["text"] for r in map(json.loads, (train_data / "finetune/corpus.jsonl").open())}
    listed = [r["candidates"] for r in map(json.loads, (train_data / "finetune/retrieval.jsonl").open())]
    batch = task.texts(StepPlan("retrieval", (0, 5)))
    for row, ids, texts in zip((0, 5), batch.negative_ids, batch.negatives):
        assert ids == [str(c) for c in listed[row][3:5]]
        assert texts == [corpus[c] for c in ids]
    assert batch.queries == [task.rows[0]["query"], task.rows[5]["query"]]
    assert batch.ids == [task.rows[0]["id"], task.rows[5]["id"]]


def test_positive_cycles_with_the_epoch(tasks):
    task = tasks["retrieval"]
    row = next(i for i, r in enumerate(task.rows) if len(r["positives"]) > 1)
    first = task.texts(StepPlan("retrieval", (row,), epoch=0)).passages[0]
    second = task.texts(StepPlan("retrieval", (row,), epoch=1)).passages[0]
    assert first == task.rows[row]["positives"][0] and second == task.rows[row]["positives"][1]


def test_sts_batch_carries_scores(tasks):
    batch = tasks["sts"].texts(StepPlan("sts", (0, 1, 2)))
    assert batch.labels == [float(tasks["sts"].rows[i]["score"]) for i in range(3)] and batch.negatives is None


def test_too_few_candidates_is_named(recipe_dict, train_data):
    recipe_dict["stages"]["finetune"]["tasks"]["retrieval"]["negatives"] = {"count": 20, "skip_top": 10}
    recipe = recipe_from_dict(recipe_dict)
    with pytest.raises(InputError, match="needs 30") as err:
        load_tasks(recipe.stages["finetune"].tasks, train_data)
    assert "retrieval.jsonl" in str(err.value) and "row 1" in str(err.value)


def test_missing_corpus_is_named(recipe_dict, train_data):
    recipe_dict["stages"]["finetune"]["tasks"]["retrieval"]["corpus"] = "finetune/none.jsonl"
    recipe = recipe_from_dict(recipe_dict)
    with pytest.raises(InputError, match="stages.finetune.tasks.retrieval.corpus: no such data file"):
        load_tasks(recipe.stages["finetune"].tasks, train_data, key="stages.finetune.tasks")


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_sequential_turns_and_determinism(tasks, grad_accum):
    composer = SequentialTasks(tasks, seed=3, grad_accum=grad_accum)
    plans = [batch[0][0] for batch in composer]  # a batch per process: its plans, one per task (one here)
    assert len(plans) == len(composer) and len(composer) % (2 * grad_accum) == 0
    steps = [plans[i:i + grad_accum] for i in range(0, len(plans), grad_accum)]
    assert all(len({p.task for p in step}) == 1 for step in steps)  # a step's micro-batches share a task
    assert [s[0].task for s in steps] == ["retrieval", "sts"] * (len(steps) // 2)
    assert [b[0][0] for b in composer] == plans  # same (seed, epoch): same plans
    composer.set_epoch(1)
    again = [b[0][0] for b in composer]
    assert again != plans and all(p.epoch == 1 for p in again)
    rows = [r for p in plans if p.task == "sts" for r in p.rows]
    assert len(rows) == len(set(rows))  # no row twice in one epoch


def test_duplicates_are_kept_out_of_a_batch(tasks):
    task = tasks["retrieval"]
    task.rows.append(dict(task.rows[0], id="copy"))  # same query and positives as row 0
    copy = len(task.rows) - 1
    batches = deduplicated_batches(task, [0, copy, 1, 2, 3, 4, 5, 6], 4)
    assert batches == [(0, 1, 2), (3, 4, 5, 6)]


def test_every_rank_trains_the_same_task_in_a_step(tasks):
    """With 2 ranks, accelerate's BatchSamplerShard gives batch i to rank i mod 2: each rank gets its own
    rows, and in every step all ranks and micro-batches are on one task."""
    from accelerate.data_loader import BatchSamplerShard

    composer = SequentialTasks(tasks, seed=0, grad_accum=2, world_size=2)
    per_rank = [[b[0][0] for b in BatchSamplerShard(composer, num_processes=2, process_index=r)] for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == len(composer) // 2
    for i in range(0, len(per_rank[0]), 2):  # 2 micro-batches per step on each rank
        step = per_rank[0][i:i + 2] + per_rank[1][i:i + 2]
        assert len({p.task for p in step}) == 1
        rows = [r for p in step for r in p.rows]
        assert len(rows) == len(set(rows))

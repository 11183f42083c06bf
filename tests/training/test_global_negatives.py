"""In-batch negatives across processes: the gather's order (each query's target is its own row), the
global batches the composer shares out, and 2 gloo processes with batch B training exactly as one
process with batch 2B."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conan_embed.errors import InputError
from conan_embed.recipe.schema import recipe_from_dict
from conan_embed.recipe.stage_training import stage_paths, train_stage
from conan_embed.serving.local import free_port
from conan_embed.training.composers import SequentialTasks
from conan_embed.training.callbacks import read_log
from conan_embed.training.training_config import in_batch_scope
from conan_embed.training.distributed import split_global_batch
from conan_embed.training.training_tasks import load_tasks

HERE = Path(__file__).parent


def test_split_global_batch():
    assert split_global_batch(tuple(range(8)), 2) == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert split_global_batch((9, 8, 7, 6, 5), 3) == [(9, 8), (7, 6), (5,)]
    assert split_global_batch((1,), 1) == [(1,)]


def test_gather_order_on_two_processes():
    """Rows of different counts (3 and 2, padded to 3): each process finds its own rows at `offset + i`,
    padding is marked invalid, the loss scale evens out the counts, and gradients return to their rows."""
    done = subprocess.run([sys.executable, str(HERE / "gather_worker.py"), str(free_port())], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_scope_defaults_and_checks(recipe_dict):
    recipe = recipe_from_dict(recipe_dict)
    weak = recipe.stages["pretrain"].tasks["weak"]
    assert in_batch_scope(weak, "sequential") == "global" and in_batch_scope(weak, "cbb") == "local"
    weak.loss.in_batch = False
    assert in_batch_scope(weak, "sequential") == "none"
    weak.loss.in_batch = "local"
    assert in_batch_scope(weak, "sequential") == "local"
    assert in_batch_scope(recipe.stages["finetune"].tasks["sts"], "sequential") == "none"
    stage = recipe_dict["stages"]["finetune"]
    stage["composer"] = "cbb"
    stage["tasks"]["retrieval"]["loss"] = {"in_batch": "global"}
    with pytest.raises(InputError, match="'global' does not combine with the cbb composer"):
        recipe_from_dict(recipe_dict)
    stage["tasks"]["retrieval"]["loss"] = {"in_batch": "everywhere"}
    with pytest.raises(InputError, match="stages.finetune.tasks.retrieval.loss.in_batch"):
        recipe_from_dict(recipe_dict)


def test_two_processes_get_the_one_process_batch(recipe_dict, train_data):
    """With global negatives the composer forms (and deduplicates) batches of 2B rows and hands rank k the
    k-th half: gathered in rank order they are the one-process 2B batch."""
    recipe = recipe_from_dict(recipe_dict)
    tasks = load_tasks(recipe.stages["pretrain"].tasks, train_data)
    tasks["weak"].config.batch_size = 4
    two = list(SequentialTasks(tasks, seed=3, world_size=2))
    tasks_one = load_tasks(recipe.stages["pretrain"].tasks, train_data)
    tasks_one["weak"].config.batch_size = 8
    one = list(SequentialTasks(tasks_one, seed=3, world_size=1))
    assert len(two) == 2 * len(one) > 0
    for step, [(plan,)] in enumerate(one):
        assert two[2 * step][0][0].rows + two[2 * step + 1][0][0].rows == plan.rows


@pytest.fixture(scope="module")
def bert_without_dropout(train_data, tmp_path_factory):
    """Dropout would draw different masks in each process: the comparison needs none."""
    from conan_embed.data.records import read_records
    from conan_embed.testing import tiny_bert

    texts = ["query: passage: "] + [r["query"] for r in read_records(train_data / "finetune/retrieval.jsonl")]
    texts += [r["text"] for r in read_records(train_data / "finetune/corpus.jsonl")]
    return tiny_bert(tmp_path_factory.mktemp("global-bert") / "bert", texts, hidden=32, layers=2, dropout=0.0)


def _stage_recipe(recipe_dict, tmp_path, name, batch, *, in_batch=True, mini_batch=None):
    """Pairs (in-batch negatives only) and retrieval (in-batch and 2 hard negatives) taking turns."""
    stage = copy.deepcopy(recipe_dict["stages"]["finetune"])
    weak = dict(recipe_dict["stages"]["pretrain"]["tasks"]["weak"], batch_size=batch)
    retrieval = dict(stage["tasks"]["retrieval"], batch_size=batch)
    for task in (weak, retrieval):
        task["loss"] = {"in_batch": in_batch, "mini_batch_size": mini_batch}
    stage.update(init="model", max_steps=2, composer="sequential", tasks={"weak": weak, "retrieval": retrieval},
                 optim={"lr": 1e-3, "warmup": 0.0})
    return dict(recipe_dict, stages={"finetune": stage}, output_dir=str(tmp_path / name))


def _train_on_two(recipe: dict, tmp_path) -> None:
    path = tmp_path / f"{Path(recipe['output_dir']).name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    done = subprocess.run([sys.executable, str(HERE / "stage_worker.py"), str(path), "2", str(free_port())],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]


def _log_and_weights(recipe: dict):
    from safetensors.torch import load_file

    loaded = recipe_from_dict(recipe)
    paths = stage_paths(loaded, "finetune")
    return read_log(paths.log), load_file(str(paths.model / "model.safetensors"))


@pytest.mark.parametrize("mini_batch", [None, 3], ids=["uncached", "cached"])
def test_two_processes_with_global_negatives_train_as_one_with_twice_the_batch(recipe_dict, tmp_path,
                                                                               bert_without_dropout, mini_batch):
    """2 optimizer steps (a pairs step, a retrieval step with hard negatives): the loss, the gradient norm
    and the weights of 2 processes x batch 4 with global in-batch negatives equal 1 process x batch 8; with
    GradCache too (the replays all-reduce once per step). Local negatives train differently."""
    recipe_dict["model"]["base"] = str(bert_without_dropout)
    one = _stage_recipe(recipe_dict, tmp_path, "one", 8)
    train_stage(recipe_from_dict(one), "finetune", show_progress=False)
    two = _stage_recipe(recipe_dict, tmp_path, "two", 4, mini_batch=mini_batch)
    _train_on_two(two, tmp_path)
    (log_one, w_one), (log_two, w_two) = _log_and_weights(one), _log_and_weights(two)
    assert [r["step"] for r in log_one] == [r["step"] for r in log_two] == [1, 2]
    for a, b in zip(log_one, log_two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    # AdamW moves every weight by about lr (1e-3) a step whatever its gradient's size, so an element whose
    # gradient is at rounding level may differ by a small fraction of lr: 2e-5 is 2 % of one step
    for key in w_one:
        torch.testing.assert_close(w_two[key], w_one[key], rtol=0, atol=2e-5)
    if mini_batch is None:
        local = _stage_recipe(recipe_dict, tmp_path, "local", 4, in_batch="local")
        _train_on_two(local, tmp_path)
        log_local, _ = _log_and_weights(local)
        assert log_local[0]["loss"] != pytest.approx(log_one[0]["loss"], rel=1e-3)  # fewer negatives: lower loss

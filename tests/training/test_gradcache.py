"""Cached losses (GradCache): the same loss and parameter gradients as the uncached step, for every loss
the trainer builds (InfoNCE with hard negatives, in-batch InfoNCE on pairs, CoSENT, CBB's composed step),
with Matryoshka; the replay draws the forward pass's dropout masks; end to end with bf16, gradient
accumulation, dynamic hard negatives and resume."""

from __future__ import annotations

import copy

import pytest
import torch

from conan_embed.errors import InputError
from conan_embed.recipe.schema import recipe_from_dict
from conan_embed.recipe.stage_training import build_trainer, stage_paths, train_stage

SETUPS = {
    "retrieval-infonce": ({"retrieval"}, "sequential"),
    "pairs-infonce": ({"weak"}, "sequential"),
    "sts-cosent": ({"sts"}, "sequential"),
    "cbb-retrieval+sts": ({"retrieval", "sts"}, {"name": "cbb", "retrieval_ranks": 2, "sts_ranks": 2}),
}


@pytest.fixture(scope="module")
def bert_without_dropout(train_data, tmp_path_factory):
    from conan_embed.data.records import read_records
    from conan_embed.testing import tiny_bert

    texts = ["query: passage: "] + [r["query"] for r in read_records(train_data / "finetune/retrieval.jsonl")]
    texts += [r["text"] for r in read_records(train_data / "finetune/corpus.jsonl")]
    return tiny_bert(tmp_path_factory.mktemp("gc-bert") / "bert", texts, hidden=32, layers=2, dropout=0.0)


def _recipe(recipe_dict, tmp_path, tasks, composer, mini_batch, **stage_settings):
    stage = copy.deepcopy(recipe_dict["stages"]["finetune"])
    stage["tasks"]["weak"] = dict(recipe_dict["stages"]["pretrain"]["tasks"]["weak"])
    stage["tasks"] = {name: t for name, t in stage["tasks"].items() if name in tasks}
    for task in stage["tasks"].values():
        task["loss"] = {**task.get("loss", {}), "mini_batch_size": mini_batch}
    stage.update(init="model", composer=composer, **stage_settings)
    return recipe_from_dict(dict(recipe_dict, stages={"finetune": stage},
                                 output_dir=str(tmp_path / f"run-{mini_batch}")))


def _step(recipe):
    """Loss and parameter gradients of the stage's first micro-batch (one training step, no optimizer)."""
    trainer = build_trainer(recipe, "finetune")
    trainer.current_gradient_accumulation_steps = 1  # set by train() otherwise
    [parts] = next(iter(trainer.composer))
    loss = trainer.training_step(trainer.model, {"plan": parts})
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return float(loss), grads, trainer


@pytest.mark.parametrize("setup", SETUPS)
def test_cached_step_equals_uncached(setup, recipe_dict, bert_without_dropout, tmp_path):
    tasks, composer = SETUPS[setup]
    recipe_dict["model"]["base"] = str(bert_without_dropout)  # Matryoshka at 16, 32 and 48 dims
    loss, grads, _ = _step(_recipe(recipe_dict, tmp_path, tasks, composer, None))
    # 3 texts a mini-batch: every field (4-8 queries, 4-16 passages) is embedded in several
    cached_loss, cached_grads, trainer = _step(_recipe(recipe_dict, tmp_path, tasks, composer, 3))
    assert all(trainer.cached(t) for t in trainer.tasks.values())
    assert cached_loss == pytest.approx(loss, rel=1e-5)
    assert cached_grads.keys() == grads.keys() and len(grads) > 10
    scale = max(g.abs().max().item() for g in grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(cached_grads[name], grad, rtol=1e-5, atol=1e-5 * scale, msg=name)


def test_replay_draws_the_forward_pass_dropout_masks(recipe_dict, tmp_path):
    """With dropout on, one mini-batch per field embeds from the random state the uncached step starts
    from: the gradients agree only if the replay restores that state (and leaves the generator as the
    forward pass left it: the next step's masks agree too)."""
    recipe_dict["stages"]["finetune"]["precision"] = "fp32"
    loss, grads, _ = _step(_recipe(recipe_dict, tmp_path, {"retrieval"}, "sequential", None))
    after_uncached = torch.get_rng_state()
    cached_loss, cached_grads, _ = _step(_recipe(recipe_dict, tmp_path, {"retrieval"}, "sequential", 1000))
    assert torch.equal(torch.get_rng_state(), after_uncached)
    assert cached_loss == pytest.approx(loss, rel=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(cached_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def _cbb_stage(recipe_dict, mini_batch, **extra):
    stage = recipe_dict["stages"]["finetune"]
    stage.update(init="model", max_steps=4, grad_accum=2, precision="bf16", composer="cbb",
                 mining={"mode": "dynamic", "check_every": 1, "min_initial": 2.0},
                 checkpoint={"every": 2, "keep": 4}, **extra)
    for task in stage["tasks"].values():
        task["loss"] = {**task.get("loss", {}), "mini_batch_size": mini_batch}
    return dict(recipe_dict, stages={"finetune": stage})


def test_cached_cbb_with_dynamic_negatives_resumes_exactly(recipe_dict, tmp_path):
    """bf16, gradient accumulation 2, CBB, dynamic hard negatives (min_initial above any cosine: every set
    checked is replaced) and dropout: a cached run killed after step 3 and resumed ends with
    the uninterrupted cached run's weights and mined sets."""
    from conan_embed.testing import crash_after_step

    full = recipe_from_dict(_cbb_stage(copy.deepcopy(recipe_dict), 3) | {"output_dir": str(tmp_path / "full")})
    summary = train_stage(full, "finetune", show_progress=False)
    assert summary["mining"]["retrieval"]["rows_replaced"] > 0  # the scores reached the miner through the cached loss
    crashy = recipe_from_dict(_cbb_stage(copy.deepcopy(recipe_dict), 3) | {"output_dir": str(tmp_path / "crashy")})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_stage(crashy, "finetune", show_progress=False, callbacks=[crash_after_step(3)])
    train_stage(crashy, "finetune", resume=True, show_progress=False)
    from safetensors.torch import load_file

    a, b = (load_file(str(stage_paths(r, "finetune").model / "model.safetensors")) for r in (full, crashy))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    import numpy as np

    sa, sb = (np.load(stage_paths(r, "finetune").checkpoints / "checkpoint-4" / "dhnm_state.npz") for r in (full, crashy))
    assert sa.files == sb.files
    for key in sa.files:  # floats (scores, NaN where unseen) and ints (windows)
        assert np.array_equal(sa[key], sb[key], equal_nan=sa[key].dtype.kind == "f"), key


def test_mini_batch_size_is_checked(recipe_dict):
    recipe_dict["stages"]["finetune"]["tasks"]["sts"]["loss"]["mini_batch_size"] = 0
    with pytest.raises(InputError, match=r"stages.finetune.tasks.sts.loss.mini_batch_size must be > 0"):
        recipe_from_dict(recipe_dict)


def test_packed_training_with_activation_checkpointing_trains_as_padded(recipe_dict, bert_without_dropout, tmp_path):
    """Activation checkpointing recomputes each layer in the backward pass, outside the forward that
    packed the texts: the recomputation must keep them apart too. Two steps, packed and padded, fp32."""
    from safetensors.torch import load_file

    recipe_dict["model"]["base"] = str(bert_without_dropout)
    weights = []
    for padding_free in (True, False):
        recipe = _recipe(recipe_dict, tmp_path / str(padding_free), {"retrieval"}, "sequential", None, max_steps=2,
                         activation_checkpointing=True, padding_free=padding_free, precision="fp32")
        train_stage(recipe, "finetune", show_progress=False)
        weights.append(load_file(str(stage_paths(recipe, "finetune").model / "model.safetensors")))
    # AdamW moves each weight by about lr a step whatever its gradient's size: 2 % of a step of slack
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=2e-5, msg=key)

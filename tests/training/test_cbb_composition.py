"""The trained CBB step checked against its formula, written out here with the functional losses:

    L = Σ_t w_t · Σ_d cbb_loss(q_t, p_t, negatives_t) + β · (1/S) Σ_{j<S} Σ_u w_u · Σ_d cosent(a_uj, b_uj, y_uj)

(d over the Matryoshka dims, negatives_t[k, i] = query i's negatives held by retrieval rank k), from the same
embeddings the trainer uses. Two retrieval tasks (with and without in-batch negatives) and two STS tasks with
different weights, temperatures and scales,
so that any error in the trainer's per-task weights, β, the 1/S mean or the per-process scaling shows: on one
process playing 2 retrieval and 2 STS ranks, and on 3 gloo processes (2 retrieval ranks, 1 STS rank), whose
gradients, averaged as data-parallel training does, must be L's. The worker also checks the gather order."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conan_embed.losses import cbb_loss, cosent
from conan_embed.recipe.schema import recipe_from_dict
from conan_embed.recipe.stage_training import build_trainer
from conan_embed.serving.local import free_port

WORKER = Path(__file__).with_name("cbb_step_worker.py")
DIMS = (16, 32, 48)  # the tiny recipe's Matryoshka dims and its 48-dim head
BETA = 0.6


def _recipe(recipe_dict, tmp_path, composer: dict) -> dict:
    stage = copy.deepcopy(recipe_dict["stages"]["finetune"])
    retrieval, sts = stage["tasks"]["retrieval"], stage["tasks"]["sts"]
    stage["tasks"] = {
        "retrieval": {**retrieval, "loss": {"weight": 0.7, "temperature": 0.05}},
        # Eq. 3 as written (no in-batch negatives): a query must meet its own negatives, not another row's
        "retrieval_b": {**retrieval, "negatives": {"count": 2, "skip_top": 5},
                        "loss": {"weight": 1.3, "temperature": 0.1, "in_batch": False}},
        "sts": {**sts, "loss": {"name": "cosent", "weight": 0.4, "scale": 20.0}},
        "sts_b": {**sts, "loss": {"name": "cosent", "weight": 1.5, "scale": 10.0}},
    }
    stage.update(init="model", max_steps=1, precision="fp32", composer={"name": "cbb", "beta": BETA, **composer})
    return dict(recipe_dict, stages={"finetune": stage}, output_dir=str(tmp_path / "run"))


def expected_step(trainer, ranks: list[tuple]) -> torch.Tensor:
    """L from every rank's plans (in rank order), through the trainer's embedding function only."""
    def embed(texts, field, task):
        return trainer.embed(trainer.model, texts, field, task)

    total = 0.0
    for name, task in trainer.tasks.items():
        cfg = task.config.loss
        plans = [p for parts in ranks for p in parts if p.task == name]
        if task.kind == "retrieval":
            assert len({p.rows for p in plans}) == 1  # every retrieval rank holds the same rows
            shares = {}  # share k -> [B, K] texts, from the plan that holds it
            for plan in plans:
                batch = task.texts(plan, None)
                per_share = len(batch.negatives[0]) // len(plan.shares)
                for at, k in enumerate(plan.shares):  # each row's negatives are share-major
                    shares[k] = [row[at * per_share:(at + 1) * per_share] for row in batch.negatives]
            q = embed(batch.queries, "query", task)
            p = embed(batch.passages, "passage", task)
            negatives = torch.stack([
                embed([t for row in shares[k] for t in row], "passage", task).reshape(len(q), -1, q.shape[1])
                for k in sorted(shares)])
            assert negatives.shape[0] == trainer.composer.shares
            total = total + cfg.weight * sum(
                cbb_loss(q[:, :d], p[:, :d], negatives[..., :d], temperature=cfg.temperature,
                         in_batch=cfg.in_batch is not False)
                for d in DIMS)
        else:
            sts_batches = trainer.composer.config.sts_ranks
            assert len(plans) == sts_batches
            for plan in plans:
                batch = task.texts(plan, None)
                a, b = embed(batch.queries, "query", task), embed(batch.passages, "query", task)
                total = total + BETA / sts_batches * cfg.weight * sum(
                    cosent(a[:, :d], b[:, :d], torch.tensor(batch.labels), cfg.scale) for d in DIMS)
    return total


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            for n, p in model.named_parameters() if p.requires_grad}


def _assert_same(loss, grads, expected_loss, expected_grads):
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert grads.keys() == expected_grads.keys() and len(grads) > 10
    scale = max(g.abs().max().item() for g in expected_grads.values())
    assert scale > 0
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


def _expected(recipe, ranks_of):
    """(L, its gradients) on a fresh model of `recipe` (the same seeded weights the trainer starts from)."""
    trainer = build_trainer(recipe, "finetune")
    assert tuple(trainer.loss.dims) == DIMS
    trainer.model.train()
    trainer.model.zero_grad()
    loss = expected_step(trainer, ranks_of(trainer))
    loss.backward()
    return float(loss.detach()), _grads(trainer.model)


@pytest.fixture
def no_dropout_recipe(recipe_dict, tmp_path, train_data):
    from conan_embed.data.records import read_records
    from conan_embed.testing import tiny_bert

    texts = ["query: passage: "] + [r["query"] for r in read_records(train_data / "finetune/retrieval.jsonl")]
    texts += [r["text"] for r in read_records(train_data / "finetune/corpus.jsonl")]
    texts += [r[k] for r in read_records(train_data / "finetune/sts.jsonl") for k in ("text1", "text2")]
    recipe_dict["model"]["base"] = str(tiny_bert(tmp_path / "bert", texts, hidden=32, layers=2, dropout=0.0))
    return recipe_dict


def test_one_process_step_is_the_formula(no_dropout_recipe, tmp_path):
    recipe = recipe_from_dict(_recipe(no_dropout_recipe, tmp_path, {"retrieval_ranks": 2, "sts_ranks": 2}))
    trainer = build_trainer(recipe, "finetune")
    trainer.current_gradient_accumulation_steps = 1  # set by train() otherwise
    [parts] = next(iter(trainer.composer))
    assert len(trainer.composer.roles) == 1 and sorted(p.task for p in parts).count("sts") == 2
    loss = float(trainer.training_step(trainer.model, {"plan": parts}))
    grads = _grads(trainer.model)
    _assert_same(loss, grads, *_expected(recipe, lambda t: [next(iter(t.composer))[0]]))


def test_three_processes_step_is_the_formula(no_dropout_recipe, tmp_path):
    import yaml

    from conan_embed.training.composers import build_composer

    recipe_dict = _recipe(no_dropout_recipe, tmp_path, {"sts_ranks": 1})
    path, out = tmp_path / "three.yaml", tmp_path / "step.pt"
    path.write_text(yaml.safe_dump(recipe_dict, sort_keys=False))
    done = subprocess.run([sys.executable, str(WORKER), str(path), "3", str(free_port()), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = torch.load(out)
    recipe = recipe_from_dict(recipe_dict)

    def ranks_of(trainer):  # the 3 processes' first micro-batches, as their composer deals them
        stage = recipe.stages["finetune"]
        composer = build_composer(stage.composer_config, trainer.tasks, seed=recipe.seed, grad_accum=1, world_size=3)
        trainer.composer = composer  # shares (N = 2) and roles of the 3-process step
        return [b[0] for b in list(composer)[:3]]

    _assert_same(saved["loss"], saved["grads"], *_expected(recipe, ranks_of))

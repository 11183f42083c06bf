"""Cross-GPU batch balance in the trainer: the roles, the composer, and one process with virtual ranks
training exactly as several real gloo processes do (loss, gradient norm and weights)."""

from __future__ import annotations

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
from conan_embed.training.composers import CrossGPUBatchBalance
from conan_embed.training.callbacks import read_log
from conan_embed.training.training_config import ComposerConfig
from conan_embed.training.distributed import RankRole, cbb_roles
from conan_embed.training.training_tasks import load_tasks

WORKER = Path(__file__).with_name("stage_worker.py")
RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_roles():
    assert cbb_roles(3, sts_ranks=1) == [RankRole((0,), ()), RankRole((1,), ()), RankRole((), (0,))]
    assert cbb_roles(2, sts_ranks=0) == [RankRole((0,), ()), RankRole((1,), ())]
    assert cbb_roles(1, sts_ranks=2, retrieval_ranks=3) == [RankRole((0, 1, 2), (0, 1))]
    assert cbb_roles(8) == cbb_roles(8, retrieval_ranks=7) and sum(r.retrieval for r in cbb_roles(8)) == 7
    with pytest.raises(InputError, match="leaves no retrieval rank"):
        cbb_roles(2, sts_ranks=2)
    with pytest.raises(InputError, match="retrieval_ranks is 2"):
        cbb_roles(4, sts_ranks=1, retrieval_ranks=2)


@pytest.mark.parametrize("world", [1, 3])
def test_every_step_holds_every_task(recipe_dict, train_data, world):
    stage = recipe_dict["stages"]["finetune"]
    stage["composer"] = {"name": "cbb", "sts_ranks": 1, **({"retrieval_ranks": 2} if world == 1 else {})}
    recipe = recipe_from_dict(recipe_dict)
    tasks = load_tasks(recipe.stages["finetune"].tasks, train_data)
    composer = CrossGPUBatchBalance(tasks, seed=3, grad_accum=2, world_size=world,
                                    config=recipe.stages["finetune"].composer_config)
    batches = list(composer)
    assert len(batches) == len(composer) == (48 // 8) // 2 * 2 * world  # sts (48 rows, batch 8) runs out first
    assert batches == list(composer)  # deterministic in (seed, epoch)
    for micro in range(0, len(batches), world):
        parts = [b[0] for b in batches[micro: micro + world]]
        retrieval = [p for rank in parts for p in rank if p.task == "retrieval"]
        assert len({p.rows for p in retrieval}) == 1  # every retrieval rank holds the same rows ...
        assert sorted(s for p in retrieval for s in p.shares) == [0, 1]  # ... and its own share of negatives
        assert [p.task for rank in parts for p in rank].count("sts") == 1
    batch, window = tasks["retrieval"].texts(retrieval[0], None), tasks["retrieval"].negative_window(retrieval[0].rows[0])
    assert all(len(n) == len(retrieval[0].shares) for n in batch.negatives)  # 2 negatives a row, 1 per rank
    assert batch.negative_ids[0] == [tasks["retrieval"].corpus_ids[window[s]] for s in retrieval[0].shares]


def _recipe(recipe_dict, tmp_path, name, composer, *, sts=True):
    stage = recipe_dict["stages"]["finetune"]
    stage.update(init="model", max_steps=2, composer=composer, optim={"lr": 1e-3, "warmup": 0.0})
    if not sts:
        stage["tasks"] = {"retrieval": stage["tasks"]["retrieval"]}
    return dict(recipe_dict, stages={"finetune": stage}, output_dir=str(tmp_path / name))


@pytest.fixture(scope="module")
def bert_without_dropout(train_data, tmp_path_factory):
    """Dropout would draw different masks in each process: the comparison needs none."""
    from conan_embed.data.records import read_records
    from conan_embed.testing import tiny_bert

    texts = ["query: passage: "] + [r["query"] for r in read_records(train_data / "finetune/retrieval.jsonl")]
    texts += [r["text"] for r in read_records(train_data / "finetune/corpus.jsonl")]
    return tiny_bert(tmp_path_factory.mktemp("cbb-bert") / "bert", texts, hidden=32, layers=2, dropout=0.0)


@pytest.mark.parametrize("sts_ranks, deepspeed", [(1, False), (0, False), (1, True)],
                         ids=["retrieval+sts-rank", "two-retrieval-ranks", "deepspeed-zero1"])
def test_two_processes_train_as_one_with_virtual_ranks(recipe_dict, tmp_path, bert_without_dropout, sts_ranks,
                                                       deepspeed):
    """2 gloo processes (1 retrieval + 1 STS rank, or 2 retrieval ranks sharing out the negatives; with DDP
    or DeepSpeed ZeRO-1) and one process playing the same roles take the same 2 optimizer steps: the
    gradient scaling across the gather with gradients and the processes' averaging is right."""
    if deepspeed:
        pytest.importorskip("deepspeed")
    recipe_dict["model"]["base"] = str(bert_without_dropout)
    virtual = {"name": "cbb", "sts_ranks": sts_ranks, "retrieval_ranks": 2 - sts_ranks}
    one = recipe_from_dict(_recipe(recipe_dict, tmp_path, "one", virtual, sts=bool(sts_ranks)))
    train_stage(one, "finetune", show_progress=False)
    two = _recipe(recipe_dict, tmp_path, "two", {"name": "cbb", "sts_ranks": sts_ranks}, sts=bool(sts_ranks))
    if deepspeed:
        two["stages"]["finetune"]["deepspeed"] = str(RECIPES / "ds_zero1.json")
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(two, sort_keys=False))
    # DeepSpeed compiles a CPU op on first use into torch's extensions folder (~/.cache/torch_extensions): ~35 s
    # once per virtual environment
    done = subprocess.run([sys.executable, str(WORKER), str(path), "2", str(free_port())], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    two = recipe_from_dict(two)
    a, b = (read_log(stage_paths(r, "finetune").log) for r in (one, two))
    assert [(r["step"]) for r in a] == [r["step"] for r in b] == [1, 2]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5) and x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5)
    from safetensors.torch import load_file

    wa, wb = (load_file(str(stage_paths(r, "finetune").model / "model.safetensors")) for r in (one, two))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=2e-6)


def test_composer_settings_are_checked(recipe_dict):
    stage = recipe_dict["stages"]["finetune"]
    for composer, message in (({"name": "cbb", "retrieval_ranks": 3}, "negatives.count 2 does not split into 3"),
                              ({"name": "cbb", "sts_ranks": 0}, "sts_ranks is 0 but the stage has an STS task"),
                              ({"name": "cbb", "beta": -1}, "composer.beta must be >= 0"),
                              ({"name": "cbx"}, "composer.name: expected one of"),
                              ("cbx", "composer: expected a mapping \\(ComposerConfig\\) or one of 'sequential', 'cbb'")):
        stage["composer"] = composer
        with pytest.raises(InputError, match=message):
            recipe_from_dict(recipe_dict)
    stage["composer"] = "cbb"
    recipe_dict["stages"]["pretrain"]["composer"] = "cbb"
    with pytest.raises(InputError, match="cbb trains retrieval"):
        recipe_from_dict(recipe_dict)
    stage["init"] = "model"
    loaded = recipe_from_dict(dict(recipe_dict, stages={"finetune": stage})).stages["finetune"]
    assert loaded.composer == "cbb" and loaded.composer_config == ComposerConfig("cbb")


def test_run_on_two_processes(recipe_dict, tmp_path, capsys):
    """`conan-embed run --nproc 2`: both processes train every stage (CBB fine-tuning) and encode a shard
    each for mining between the stages; rank 0 searches, evaluates and writes the report."""
    from conan_embed.cli import main

    recipe_dict["stages"]["finetune"].update(composer="cbb", max_steps=4)
    recipe_dict["mine"] = {"model": "pretrain", "output": str(tmp_path / "mined.jsonl"), "top_k": 12, "relative_margin": None,
                           "cache_dir": str(tmp_path / "cache")}
    recipe_dict["stages"]["finetune"]["tasks"]["retrieval"]["file"] = str(tmp_path / "mined.jsonl")
    recipe_dict["eval"] = {"size": "tiny", "dims": [None], "tasks": ["Retrieval"]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_dict, sort_keys=False))
    assert main(["run", str(path), "--nproc", "2"]) == 0
    run = tmp_path / "run"
    import json

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stages"]["finetune"]["steps"] == 4 and metrics["mining"]["rows"] == 48
    shards = metrics["mining"]["processes"]["shards"]["passage"]
    assert [s["rank"] for s in shards] == [0, 1] and sum(s["texts"] for s in shards) == metrics["mining"]["corpus_size"]
    assert set(metrics["eval"]) == {"base", "pretrain", "finetune"} and (run / "model" / "modules.json").is_file()
    assert [r["step"] for r in read_log(run / "finetune" / "log.jsonl")] == [1, 2, 3, 4]  # one writer

    # resumed: both ranks find every step done (mining too: all skip it, none waits in a collective alone)
    assert main(["run", str(path), "--nproc", "2", "--resume"]) == 0
    again = json.loads((run / "metrics.json").read_text())
    assert again["steps"]["mine"]["reused"] and again["mining"] == metrics["mining"]

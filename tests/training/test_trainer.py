"""The trainer: Matryoshka InfoNCE with scores, per-step records, logs, and exact resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import TrainerCallback

from conan_embed.errors import InputError
from conan_embed.recipe.schema import recipe_from_dict
from conan_embed.recipe.stage_training import stage_paths, train_stage
from conan_embed.testing import crash_after_step
from conan_embed.training.callbacks import StepRecordCallback


def _single_stage(recipe_dict, *, grad_accum=2, precision="fp32", max_steps=8, every=3):
    stage = recipe_dict["stages"]["finetune"]
    stage.update(init="model", grad_accum=grad_accum, precision=precision, max_steps=max_steps,
                 checkpoint={"every": every, "keep": 10})
    recipe_dict["stages"] = {"finetune": stage}
    return recipe_dict


class Collect(StepRecordCallback):
    def __init__(self):
        self.steps = []

    def on_step_records(self, args, state, records):
        self.steps.append((state.global_step, records))


def _weights(recipe):
    from safetensors.torch import load_file

    return load_file(str(stage_paths(recipe, "finetune").model / "model.safetensors"))


@pytest.mark.parametrize("grad_accum, precision", [(1, "fp32"), (2, "bf16")])
def test_interrupted_run_resumes_to_the_same_weights(recipe_dict, tmp_path, grad_accum, precision):
    """Crash after step 7 (the last checkpoint is step 6, in the second epoch), resume: the final weights,
    optimizer moments, scheduler and trained-on batches equal an uninterrupted run's."""
    base = _single_stage(recipe_dict, grad_accum=grad_accum, precision=precision)
    full = recipe_from_dict(dict(base, output_dir=str(tmp_path / "full")))
    crashy = recipe_from_dict(dict(base, output_dir=str(tmp_path / "crashy")))
    full_log = Collect()
    train_stage(full, "finetune", show_progress=False, callbacks=[full_log])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_stage(crashy, "finetune", show_progress=False, callbacks=[crash_after_step(7)])
    with pytest.raises(InputError, match="--resume"):
        train_stage(crashy, "finetune", show_progress=False)
    resumed_log = Collect()
    summary = train_stage(crashy, "finetune", resume=True, show_progress=False, callbacks=[resumed_log])
    assert summary["resumed_from"].endswith("checkpoint-6")
    a, b = _weights(full), _weights(crashy)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    ck_a = stage_paths(full, "finetune").checkpoints / "checkpoint-8"
    ck_b = stage_paths(crashy, "finetune").checkpoints / "checkpoint-8"
    opt_a, opt_b = (torch.load(c / "optimizer.pt", weights_only=False) for c in (ck_a, ck_b))
    for key, state in opt_a["state"].items():
        torch.testing.assert_close(state["exp_avg"], opt_b["state"][key]["exp_avg"], rtol=0, atol=1e-6)
    sched_a, sched_b = (torch.load(c / "scheduler.pt", weights_only=False) for c in (ck_a, ck_b))
    assert sched_a["last_epoch"] == sched_b["last_epoch"] == 8
    # the resumed run trained steps 7-8 on the very batches the uninterrupted run used
    assert [[r.rows for r in recs] for s, recs in full_log.steps if s > 6] == \
           [[r.rows for r in recs] for s, recs in resumed_log.steps]
    log = [json.loads(line) for line in stage_paths(crashy, "finetune").log.read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))


class Widths(TrainerCallback):
    """(prompt, token width) of every training call to the model's tokenizer."""

    def __init__(self):
        self.widths = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        preprocess = model.preprocess

        def spy(texts, prompt=None, **kw):
            out = preprocess(texts, prompt=prompt, **kw)
            if "max_length" in kw:  # training calls (checkpoint saves also encode model-card examples)
                # packed (padding-free): the longest text; padded: the batch's width
                self.widths.append((prompt, out.get("max_length_q") or out["input_ids"].shape[1]))
            return out
        model.preprocess = spy


def test_records_reach_callbacks_every_step(recipe_dict, tmp_path):
    recipe_dict["stages"]["finetune"]["tasks"]["retrieval"]["max_length"] = {"passage": 32}
    recipe = recipe_from_dict(_single_stage(recipe_dict, grad_accum=2, max_steps=4))
    seen, spy = Collect(), Widths()
    train_stage(recipe, "finetune", show_progress=False, callbacks=[seen, spy])
    # the per-field caps hold: query 24, passage 48 for the stage and 32 for the retrieval task
    assert {p for p, _ in spy.widths} == {"query: ", "passage: "}
    assert max(w for p, w in spy.widths if p == "query: ") <= 24
    assert max(w for p, w in spy.widths if p == "passage: ") == 32  # answers are longer than the task's cap
    assert [s for s, _ in seen.steps] == [1, 2, 3, 4]
    for _, records in seen.steps:
        assert len(records) == 2 and len({r.task for r in records}) == 1  # GA micro-batches, one task
        for r in records:
            if r.task == "retrieval":
                assert r.negative_scores.shape == (r.size,) and r.positive_scores.shape == (r.size,)
                assert r.negative_scores.abs().max() <= 1 and len(r.negative_ids) == r.size
                assert all(len(ids) == 2 for ids in r.negative_ids) and all(str(i).startswith("r") for i in r.ids)
            else:
                assert r.negative_scores is None and r.loss == r.loss


def test_stage_outputs_and_stop_after(recipe_dict, tmp_path, capsys):
    """The CLI: stop a stage early, --resume it, and get a model folder, log, loss curve and TensorBoard."""
    import yaml

    from conan_embed.cli import main

    recipe_dict["stages"]["pretrain"]["log"]["tensorboard"] = True
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_dict, sort_keys=False))
    assert main(["pretrain", str(path), "--stop-after", "3"]) == 0
    assert "stopped after step 3" in capsys.readouterr().out
    assert main(["pretrain", str(path), "--resume"]) == 0
    assert "5 steps" in capsys.readouterr().out
    root = tmp_path / "run" / "pretrain"
    assert (root / "model" / "modules.json").is_file() and (root / "loss.png").stat().st_size > 1000
    assert list((root / "tensorboard").glob("events.out.tfevents.*"))
    assert [json.loads(x)["step"] for x in (root / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]
    # training caps fields at 24/48 tokens; the saved model keeps the base's own limit (tiny BERT: 128)
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(root / "model")).max_seq_length == 128
    summary = json.loads((root / "stage.json").read_text())
    assert summary["steps"] == 5 and summary["resumed_from"].endswith("checkpoint-3")
    # a finished stage is reused by --resume, and a changed recipe is refused naming the key
    assert main(["pretrain", str(path), "--resume"]) == 0
    assert main(["pretrain", str(path), "--resume", "--set", "stages.pretrain.optim.lr=0.1"]) == 2
    assert "stage.optim.lr" in capsys.readouterr().err
    assert main(["finetune", str(path), "--set", "stages.finetune.tasks.sts.file=finetune/x.jsonl"]) == 2
    assert "no such data file" in capsys.readouterr().err


def test_activation_checkpointing_trains_the_same_step(recipe_dict, tmp_path):
    """Recomputing activations in backward changes memory, not the result (no dropout in play: same seed)."""
    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.enabled = model[0].auto_model.is_gradient_checkpointing

    results = []
    for flag in (False, True):
        d = _single_stage(dict(recipe_dict, output_dir=str(tmp_path / f"ac-{flag}")), grad_accum=1, max_steps=2)
        d["stages"]["finetune"]["activation_checkpointing"] = flag
        probe = Probe()
        train_stage(recipe_from_dict(d), "finetune", show_progress=False, callbacks=[probe])
        assert probe.enabled is flag
        results.append(_weights(recipe_from_dict(d)))
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-4, atol=1e-5)


def test_task_loss_weight_scales_that_task_alone(recipe_dict, tmp_path):
    """`loss.weight` multiplies one task's term of a CBB step (the quickstart weighs classification 3x)."""
    first = {}
    for weight in (1.0, 3.0):
        d = _single_stage(copy.deepcopy(recipe_dict), grad_accum=1, max_steps=1)
        d["stages"]["finetune"].update(composer="cbb")
        d["stages"]["finetune"]["tasks"]["retrieval"]["loss"] = {"weight": weight}
        d["output_dir"] = str(tmp_path / f"w{weight:g}")
        seen = Collect()
        train_stage(recipe_from_dict(d), "finetune", show_progress=False, callbacks=[seen])
        (_, records), = seen.steps
        first[weight] = {r.task: float(r.loss) for r in records}
    assert set(first[1.0]) == {"retrieval", "sts"}
    assert first[3.0]["retrieval"] == pytest.approx(3 * first[1.0]["retrieval"], rel=1e-5)
    assert first[3.0]["sts"] == pytest.approx(first[1.0]["sts"], rel=1e-5)


def test_resume_checks_the_data_and_drops_a_torn_log_line(recipe_dict, train_data, tmp_path):
    """A stage stopped at step 3 will not resume on a re-ranked candidate file of the very same size (the saved
    order and mining state point into the old ranking): the error names the file. A log line cut short by a
    crash is dropped with a warning that says so; a damaged line before the last is an error naming its row."""
    import shutil

    from conan_embed.data.records import read_records, write_records

    data = tmp_path / "data"
    shutil.copytree(train_data, data)
    recipe_dict["data"]["dir"] = str(data)
    recipe = recipe_from_dict(_single_stage(recipe_dict, grad_accum=1, max_steps=6))
    train_stage(recipe, "finetune", stop_after=3, show_progress=False)
    log = stage_paths(recipe, "finetune").log
    with log.open("a") as f:
        f.write('{"step": 4, "loss": 0.7')  # the crash came during this append
    candidates = data / "finetune/retrieval.jsonl"
    original = candidates.read_bytes()
    rows = list(read_records(candidates))
    write_records(candidates, [{**r, "candidates": r["candidates"][::-1]} for r in rows])  # same ids, reversed
    assert candidates.stat().st_size == len(original) and candidates.read_bytes() != original
    with pytest.raises(InputError, match=rf"the contents of {candidates} \(task retrieval's file\)"):
        train_stage(recipe, "finetune", resume=True, show_progress=False)
    candidates.write_bytes(original)
    with pytest.warns(UserWarning, match="dropped its last line, cut short"):
        summary = train_stage(recipe, "finetune", resume=True, show_progress=False)
    assert summary["steps"] == 6 and [json.loads(x)["step"] for x in log.read_text().splitlines()] == list(range(1, 7))
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:2] + ["{not json"] + lines[2:]) + "\n")
    from conan_embed.training.callbacks import read_log

    with pytest.raises(InputError, match="not a JSON line") as err:
        read_log(log)
    assert err.value.row == 3


def test_negatives_must_be_a_negative_source(train_data):
    """The trainer's seam for hard negatives is a protocol: the miner implements it, anything else that
    lacks it is refused before training starts."""
    from conan_embed.mining.dynamic import DynamicHardNegativeMiner
    from conan_embed.training.checkpoint import NegativeSource
    from conan_embed.training.trainer import ConanTrainer

    assert NegativeSource in DynamicHardNegativeMiner.__mro__

    class LookupOnly:  # no attach / save / load / state_name
        def lookup(self, task, rows):
            return None

    class Complete(LookupOnly):
        state_name = "fixed negatives"

        def attach(self, trainer):
            pass

        def save(self, folder):
            pass

        def load(self, folder):
            pass

    assert isinstance(Complete(), NegativeSource) and not isinstance(LookupOnly(), NegativeSource)
    with pytest.raises(TypeError, match="NegativeSource"):
        ConanTrainer(tasks={}, composer=None, max_length={}, prompts={}, negatives=LookupOnly())

"""The step runner (conan_embed.recipe.steps): order, stamps, resume, and what each rank runs."""

import json

import pytest

from conan_embed.errors import InputError
from conan_embed.recipe import steps as steps_module
from conan_embed.recipe.steps import Step, StepRunner


class Recorded(Step):
    """Writes one file; its fingerprint is whatever the test sets."""

    def __init__(self, name, folder, calls, *, key=None, rank0_only=True):
        self.name, self.folder, self.calls, self.key, self.rank0_only = name, folder, calls, key, rank0_only

    def outputs(self):
        return [self.folder / f"{self.name}.out"]

    def fingerprint(self):
        return None if self.key is None else {"key": self.key}

    def run(self, *, resume, show_progress):
        self.calls.append(self.name)
        self.outputs()[0].write_text(self.name)
        return {"wrote": self.name, "resume": resume}


def test_steps_run_in_order_and_resume_skips_the_unchanged(tmp_path):
    calls = []
    made = [Recorded("a", tmp_path, calls, key=1), Recorded("b", tmp_path, calls, key=2), Recorded("c", tmp_path, calls)]
    first = StepRunner(tmp_path, resume=True).run(made)
    assert calls == ["a", "b", "c"] and not any(r.reused for r in first.values())
    stamp = json.loads((tmp_path / "steps" / "b.json").read_text())
    assert stamp["fingerprint"] == {"key": 2} and stamp["stats"] == {"wrote": "b", "resume": True}

    calls.clear()
    made[1].key = 3  # b's inputs changed; c has no fingerprint, so it always runs
    again = StepRunner(tmp_path, resume=True).run(made)
    assert calls == ["b", "c"]
    assert again["a"].reused and again["a"].stats == first["a"].stats and again["a"].seconds == first["a"].seconds

    calls.clear()
    (tmp_path / "a.out").unlink()  # a stamp without its output is not done
    StepRunner(tmp_path, resume=True).run(made)
    assert calls == ["a", "c"]

    calls.clear()
    StepRunner(tmp_path, resume=False).run(made)  # no resume: everything again
    assert calls == ["a", "b", "c"]


def test_an_output_rewritten_since_is_not_done(tmp_path):
    """Runs that share a data folder write the same mined file with their own models: a stamp whose file
    now holds another run's bytes must not count as done, and the same bytes put back count again."""
    calls = []
    made = [Recorded("mine", tmp_path, calls, key=1)]
    StepRunner(tmp_path / "run-a", resume=True).run(made)
    (tmp_path / "mine.out").write_text("another run's candidates")
    StepRunner(tmp_path / "run-a", resume=True).run(made)
    assert calls == ["mine", "mine"]
    StepRunner(tmp_path / "run-a", resume=True).run(made)  # the step wrote its bytes back
    assert calls == ["mine", "mine"]


def test_ranks_agree_on_an_all_rank_step_before_anyone_stamps_it(tmp_path, monkeypatch):
    """Mining runs on every rank with a fingerprint: every rank reads the stamp, then all meet, and only
    then may rank 0 run and stamp it; so a late rank cannot skip a step the others are running."""
    events = []
    monkeypatch.setattr(steps_module, "init_from_launch", lambda: None)
    monkeypatch.setattr(steps_module, "launched_rank_and_world", lambda: (0, 2))
    monkeypatch.setattr(steps_module, "barrier", lambda: events.append("|"))
    mine = Recorded("mine", tmp_path, events, key=1, rank0_only=False)
    StepRunner(tmp_path, resume=True).run([mine])
    assert events == ["|", "mine"]
    events.clear()
    StepRunner(tmp_path, resume=True).run([mine])  # done: skipped, after the same meeting
    assert events == ["|"]


def test_step_names_must_be_unique(tmp_path):
    with pytest.raises(InputError, match="'a'"):
        StepRunner(tmp_path, resume=True).run([Recorded("a", tmp_path, []), Recorded("a", tmp_path, [])])


@pytest.mark.parametrize("rank", [0, 1])
def test_every_rank_runs_the_same_list(tmp_path, monkeypatch, rank):
    """Rank-0 steps are skipped elsewhere; a barrier follows a rank-0 step only when a step for every rank
    comes later, on every rank alike (else ranks would wait in different collectives)."""
    events = []
    monkeypatch.setattr(steps_module, "init_from_launch", lambda: None)
    monkeypatch.setattr(steps_module, "launched_rank_and_world", lambda: (rank, 2))
    monkeypatch.setattr(steps_module, "barrier", lambda: events.append("|"))
    made = [Recorded("data", tmp_path, events), Recorded("check", tmp_path, events),
            Recorded("train", tmp_path, events, rank0_only=False), Recorded("mine", tmp_path, events),
            Recorded("finetune", tmp_path, events, rank0_only=False), Recorded("merge", tmp_path, events),
            Recorded("eval", tmp_path, events)]
    StepRunner(tmp_path / f"rank{rank}", resume=False).run(made)
    if rank == 0:
        assert events == ["data", "|", "check", "|", "train", "mine", "|", "finetune", "merge", "eval"]
        assert (tmp_path / "rank0" / "steps" / "eval.json").is_file()
    else:
        assert events == ["|", "|", "train", "|", "finetune"]
        assert not (tmp_path / "rank1" / "steps").exists()  # stamps are rank 0's

"""DynamicHardNegativeMiner: the rule on crafted scores, windows in order, never a positive or a used id,
replacements seen by the very next step of a real run, and exact resume of its state."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conan_embed.data.records import read_records, write_records
from conan_embed.errors import InputError
from conan_embed.mining import DynamicHardNegativeMiner, negative_window
from conan_embed.mining.dynamic import STATE_FILE
from conan_embed.recipe.schema import recipe_from_dict
from conan_embed.recipe.stage_training import stage_paths, train_stage
from conan_embed.testing import crash_after_step
from conan_embed.training.callbacks import StepRecordCallback, read_log
from conan_embed.training.training_tasks import load_tasks

SKIP, COUNT = 3, 2  # the tiny recipe's negatives: {skip_top: 3, count: 2}; 24 candidates a row -> 10 windows


def _miner(recipe_dict, data_dir, **mining):
    recipe_dict["stages"]["finetune"]["mining"] = {"mode": "dynamic", "initial_score": "first_seen", **mining}
    stage = recipe_from_dict(recipe_dict).stages["finetune"]
    tasks = load_tasks(stage.tasks, data_dir)
    return tasks["retrieval"], DynamicHardNegativeMiner(tasks, stage.mining)


def _window(task, row, i):
    return task.candidates[row, list(negative_window(i, COUNT, SKIP))].tolist()


def _observe(miner, rows, scores, positive=0.9):
    """Scores seen by a training step after the last check."""
    rows = np.array(rows)
    miner.observe("retrieval", rows, np.array(scores, dtype=np.float32), np.full(len(rows), positive, np.float32),
                  step=miner.totals["retrieval"]["last_check_step"] + 1)


def test_the_paper_rule_on_crafted_scores(recipe_dict, train_data):
    task, miner = _miner(recipe_dict, train_data)
    assert miner.lookup("retrieval", [0, 1]).tolist() == [_window(task, 0, 1), _window(task, 1, 1)]
    assert miner.lookup("sts", [0]) is None
    _observe(miner, range(6), [0.7] * 5 + [0.95])  # first sight: S_initial
    _observe(miner, range(6), [0.5, 0.65, 0.6, 0.7, 0.85, 0.85])  # S_now
    events = miner.check(100, write_log=False)["retrieval"]
    # row 0: 0.575 < 0.7; row 1: 0.7475 > 0.7; row 2: 0.69 < 0.7; row 3: unchanged; row 4: rose;
    # row 5: 0.9775 > 0.95 (and |0.85| >= 0.8 anyway)
    assert (events["checked"], events["exhausted"], events["replaced"]) == (6, 2, 2)
    assert miner.lookup("retrieval", [0, 1, 2]).tolist() == [_window(task, 0, 2), _window(task, 1, 1),
                                                             _window(task, 2, 2)]
    st = miner.states["retrieval"]
    assert st.window[:3].tolist() == [2, 1, 2] and np.isnan(st.s_initial[[0, 2]]).all() and np.isnan(st.s_now[0])
    # a replaced set is not checked again until training has seen it
    assert miner.check(101, write_log=False)["retrieval"]["exhausted"] == 0
    _observe(miner, [0], [0.4])
    _observe(miner, [0], [0.3])
    assert miner.check(102, write_log=False)["retrieval"]["replaced"] == 1
    assert miner.lookup("retrieval", [0]).tolist() == [_window(task, 0, 3)]


def test_conan_v2_variant(recipe_dict, train_data):
    """v2: S_initial < 0.4 alone exhausts a set; S_now compared without abs."""
    task, miner = _miner(recipe_dict, train_data, ratio=1.2, max_score=0.7, absolute=False, min_initial=0.4,
                         check_every=1)
    _observe(miner, range(3), [0.35, 0.6, 0.6])
    _observe(miner, range(3), [0.35, 0.45, 0.55])
    events = miner.check(1, write_log=False)["retrieval"]
    assert events["exhausted"] == 2 and miner.states["retrieval"].window[:3].tolist() == [2, 2, 1]


def test_negative_scores_are_judged_by_their_drop(recipe_dict, train_data):
    """A set whose mean cosine is negative and unchanged is not exhausted (1.15 x s < s holds for every s < 0);
    one that fell by more than (1 - 1/1.15) of |S_initial| is."""
    task, miner = _miner(recipe_dict, train_data)
    _observe(miner, range(3), [-0.2, -0.2, -0.2])
    _observe(miner, range(3), [-0.2, -0.21, -0.3])
    events = miner.check(1, write_log=False)["retrieval"]
    assert (events["checked"], events["exhausted"]) == (3, 1)
    assert miner.states["retrieval"].window[:3].tolist() == [1, 1, 2]
    for step in (2, 3):  # and never again on the unchanged scores
        _observe(miner, [0], [-0.2])
        assert miner.check(step, write_log=False)["retrieval"]["exhausted"] == 0


def test_a_row_is_judged_once_per_sighting_never_on_a_stale_score(recipe_dict, train_data, tmp_path):
    """Rows seen since the last check are judged; a row not seen since then is stale: skipped and counted,
    until training sees it again."""
    task, miner = _miner(recipe_dict, train_data)
    miner.log_path = tmp_path / "log.jsonl"
    _observe(miner, range(4), [0.7] * 4)
    _observe(miner, range(4), [0.65] * 4)  # not exhausted: 1.15 x 0.65 = 0.7475 > 0.7
    assert miner.check(10)["retrieval"]["checked"] == 4
    _observe(miner, [0, 1], [0.65, 0.5])  # rows 2 and 3 unseen since step 10
    events = miner.check(20)["retrieval"]
    assert (events["checked"], events["exhausted"], events["stale"]) == (2, 1, 2)
    assert miner.states["retrieval"].seen_step[:4].tolist() == [11, 0, 1, 1]  # row 1 replaced: not seen since
    assert miner.check(30)["retrieval"]["checked"] == 0
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [x["stale"] for x in lines] == [0, 2, 3] and miner.totals["retrieval"]["stale"] == 5


def test_loss_weight_rule(recipe_dict, train_data):
    """Ours: exhausted when the set's margin to the positive grew by temperature x ln(weight_drop), i.e. its
    weight exp((S_now - S_positive) / τ) in the loss fell by weight_drop; τ = 0.05 -> 0.0347 at 2. It acts
    where the paper's rule stays silent (1.15 x S_now >= S_initial in every row here)."""
    task, miner = _miner(recipe_dict, train_data, rule="loss-weight", weight_drop=2.0)
    assert task.config.loss.temperature == 0.05
    _observe(miner, range(4), [0.80] * 4, positive=0.90)  # margin 0.10 when first seen
    rows = np.arange(4)
    miner.observe("retrieval", rows, np.array([0.76, 0.77, 0.80, 0.70], np.float32),
                  np.array([0.90, 0.90, 0.94, 0.84], np.float32), step=1)
    # margins now 0.14, 0.13, 0.14, 0.14 -> grown by 0.04, 0.03, 0.04, 0.04
    events = miner.check(1, write_log=False)["retrieval"]
    assert events["exhausted"] == 3 and miner.states["retrieval"].window[:4].tolist() == [2, 1, 2, 2]
    paper = _miner(recipe_dict, train_data)[1]
    _observe(paper, range(4), [0.80] * 4)
    _observe(paper, range(4), [0.76, 0.77, 0.80, 0.70])
    assert paper.check(1, write_log=False)["retrieval"]["exhausted"] == 0  # 1.15 x 0.70 = 0.805 > 0.80


def test_replacement_skips_false_negatives(recipe_dict, train_data):
    """Plant a likely false negative at the head of row 0's next window (it scores 0.95 against a positive at
    0.9: above 95 %): the replacement skips it, takes the following candidates, says how many it dropped, and
    measures the new set in the same pass."""
    import torch.nn.functional as F

    task, miner = _miner(recipe_dict, train_data, relative_margin=0.05, min_initial=2.0)
    row = task.rows[0]
    window2 = _window(task, 0, 2)
    planted = task.corpus_texts[window2[0]]
    q, pos, fn, other = torch.eye(4)[0], torch.eye(4)[1], torch.eye(4)[2], torch.eye(4)[3]

    def vector(text, field):
        if field == "query":
            return q
        if text in row["positives"]:
            return 0.9 * q + 0.19 ** 0.5 * pos
        if text == planted:
            return 0.95 * q + 0.0975 ** 0.5 * fn
        return 0.5 * q + 0.75 ** 0.5 * other

    miner.attach_encoder(lambda texts, field, t: F.normalize(torch.stack([vector(x, field) for x in texts]), dim=-1))
    _observe(miner, [0], [0.7])
    events = miner.check(1, write_log=False)["retrieval"]
    assert (events["replaced"], events["false_negatives_dropped"]) == (1, 1)
    after = task.candidates[0, SKIP + COUNT: SKIP + 3 * COUNT].tolist()  # windows 2 and 3, in rank order
    assert miner.lookup("retrieval", [0])[0].tolist() == after[1: 1 + COUNT]
    st = miner.states["retrieval"]
    assert st.cursor[0] == SKIP + 2 * COUNT + 1 and st.s_initial[0] == pytest.approx(0.5)
    assert miner.summary()["retrieval"]["false_negatives_dropped"] == 1


def test_rows_run_out_of_candidates_and_never_reuse_an_id(recipe_dict, train_data):
    task, miner = _miner(recipe_dict, train_data)
    seen = [set(_window(task, 0, 1))]
    for step in range(12):
        _observe(miner, [0], [0.7])
        _observe(miner, [0], [0.1])
        events = miner.check(step, write_log=False)["retrieval"]
        current = miner.lookup("retrieval", [0])[0].tolist()
        if events["replaced"]:
            assert seen[-1].isdisjoint(current) and all(s.isdisjoint(current) for s in seen)
            seen.append(set(current))
    windows = (int(task.candidate_counts[0]) - SKIP) // COUNT
    assert len(seen) == windows == 10  # the last window, then the list runs out
    st = miner.states["retrieval"]
    assert st.finished[0] and st.window[0] == windows and miner.totals["retrieval"]["out_of_candidates"] == 1
    assert miner.lookup("retrieval", [0]).tolist() == [_window(task, 0, windows)]  # kept, not checked again
    assert miner.check(99, write_log=False)["retrieval"]["checked"] == 0


def test_positives_and_repeats_never_become_negatives(recipe_dict, train_data, tmp_path):
    """Plant each row's positive id, a copy of its positive under a new id, and a repeated id among its
    candidates: none of them is ever handed out, in any window."""
    rows = list(read_records(train_data / "finetune/retrieval.jsonl"))
    corpus = list(read_records(train_data / "finetune/corpus.jsonl"))
    planted = {}
    for i, row in enumerate(rows):
        twin = f"twin-{i}"
        corpus.append({"id": twin, "text": row["positives"][0]})
        c = row["candidates"]
        row["candidates"] = c[:2] + [row["positive_ids"][0]] + c[2:6] + [twin, c[3]] + c[6:]
        planted[i] = {str(p) for p in row["positive_ids"]} | {twin}
    write_records(tmp_path / "finetune/retrieval.jsonl", rows)
    write_records(tmp_path / "finetune/corpus.jsonl", corpus)
    write_records(tmp_path / "finetune/sts.jsonl", read_records(train_data / "finetune/sts.jsonl"))
    task, miner = _miner(recipe_dict, tmp_path, ratio=1.0, max_score=1.0)
    handed = {i: [] for i in range(len(rows))}
    for step in range(12):
        for i in range(len(rows)):
            handed[i].append([task.corpus_ids[j] for j in miner.lookup("retrieval", [i])[0]])
        _observe(miner, range(len(rows)), [0.8] * len(rows))
        _observe(miner, range(len(rows)), [0.5] * len(rows))
        miner.check(step, write_log=False)
    for i, sets in handed.items():
        ids = [x for s in dict.fromkeys(map(tuple, sets)) for x in s]
        assert planted[i].isdisjoint(ids) and len(ids) == len(set(ids))
        assert ids[:2] == [str(x) for x in rows[i]["candidates"][SKIP + 1: SKIP + 3]]  # the positive dropped


class Collect(StepRecordCallback):
    def __init__(self):
        self.steps = []

    def on_step_records(self, args, state, records):
        self.steps.append((state.global_step, [(r.rows, r.negative_ids) for r in records if r.task == "retrieval"]))


def _dynamic_stage(recipe_dict, tmp_path, name, *, mining, max_steps=9, every=3, grad_accum=1):
    stage = recipe_dict["stages"]["finetune"]
    stage.update(init="model", max_steps=max_steps, grad_accum=grad_accum,
                 checkpoint={"every": every, "keep": 10}, mining={"mode": "dynamic", **mining})
    stage["tasks"] = {"retrieval": dict(stage["tasks"]["retrieval"], max_rows=12)}  # 3 steps of 4 = one epoch
    return recipe_from_dict(dict(recipe_dict, stages={"finetune": stage}, output_dir=str(tmp_path / name)))


def _walk_windows(steps, task, *, check_every: int, last: int) -> dict[int, int]:
    """Check every record's negatives against the forced schedule (each check moves every row seen since
    its assignment one window on); returns each row's last window."""
    window, fresh = {}, set()
    for step, records in steps:
        for rows, negative_ids in records:
            for row, ids in zip(rows, negative_ids):
                i = window.setdefault(row, 1)
                assert ids == [task.corpus_ids[j] for j in _window(task, row, i)], (step, row, i)
                fresh.add(row)
        if step % check_every == 0 and step < last:
            for row in fresh:
                window[row] += 1
            fresh = set()
    return window


def test_replacements_reach_the_next_step(recipe_dict, tmp_path):
    """Forced: every set seen since its assignment is exhausted (min_initial above any cosine). Each row
    walks its windows in order, one window per check it was seen before, and the step after a check
    already trains on the new sets; S_initial of new sets comes from the check's own forward pass."""
    recipe = _dynamic_stage(recipe_dict, tmp_path, "forced", max_steps=10,
                            mining={"check_every": 3, "min_initial": 2.0, "initial_score": "forward"})
    seen = Collect()
    summary = train_stage(recipe, "finetune", show_progress=False, callbacks=[seen])
    task = load_tasks(recipe.stages["finetune"].tasks, recipe.data.dir)["retrieval"]
    window = _walk_windows(seen.steps, task, check_every=3, last=10)
    assert max(window.values()) == 4 and summary["mining"]["retrieval"]["replaced"] == sum(window.values()) - len(window)
    checks = read_log(stage_paths(recipe, "finetune").log, "dhnm")
    assert [c["step"] for c in checks] == [3, 6, 9]  # and none at the last step, 10
    assert all(c["replaced"] == c["exhausted"] > 0 and c["s_initial_new"] is not None for c in checks)
    lines = read_log(stage_paths(recipe, "finetune").log)
    assert all("score/retrieval/negative" in r and -1 <= r["score/retrieval/negative"] <= 1 for r in lines)
    assert (stage_paths(recipe, "finetune").root / "negatives.png").stat().st_size > 1000


def test_state_survives_checkpoint_and_resume(recipe_dict, tmp_path):
    """Crash after step 7 (checks at 3 and 6 replaced sets; last checkpoint at 4): the resumed run ends
    with the same weights, the same mining state and trained on the same negatives."""
    from safetensors.torch import load_file

    # driven by the real training scores; the forward pass at a check draws dropout masks from the RNG too
    mining = {"check_every": 3, "ratio": 1.0, "max_score": 1.0, "initial_score": "forward"}
    full = _dynamic_stage(recipe_dict, tmp_path, "full", mining=mining, max_steps=8, every=4, grad_accum=2)
    crashy = _dynamic_stage(recipe_dict, tmp_path, "crashy", mining=mining, max_steps=8, every=4, grad_accum=2)
    full_log, resumed_log = Collect(), Collect()
    summary = train_stage(full, "finetune", show_progress=False, callbacks=[full_log])
    assert summary["mining"]["retrieval"]["replaced"] > 0
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_stage(crashy, "finetune", show_progress=False, callbacks=[crash_after_step(7)])
    resumed = train_stage(crashy, "finetune", resume=True, show_progress=False, callbacks=[resumed_log])
    assert resumed["resumed_from"].endswith("checkpoint-4") and resumed["mining"] == summary["mining"]
    assert [s for s in full_log.steps if s[0] > 4] == resumed_log.steps
    a, b = (load_file(str(stage_paths(r, "finetune").model / "model.safetensors")) for r in (full, crashy))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    states = [np.load(stage_paths(r, "finetune").checkpoints / "checkpoint-8" / STATE_FILE) for r in (full, crashy)]
    assert sorted(states[0].files) == sorted(states[1].files)
    for key in states[0].files:
        np.testing.assert_array_equal(states[0][key], states[1][key])
    log = read_log(stage_paths(crashy, "finetune").log, "dhnm")
    assert [c["step"] for c in log] == [3, 6]  # the crashed run's step-6 line was truncated and rewritten once
    assert json.loads((stage_paths(crashy, "finetune").root / "stage.json").read_text())["negatives"] == "dynamic"


def test_bad_mining_settings_are_named(recipe_dict, train_data, tmp_path):
    stage = recipe_dict["stages"]["finetune"]
    for mining, message in (({"mode": "dynamic", "tasks": ["sts"]}, "stages.finetune.mining.tasks names 'sts'"),
                            ({"mode": "dynamic", "check_every": 0}, "check_every must be > 0"),
                            ({"mode": "sometimes"}, "stages.finetune.mining.mode"),
                            ({"ratio": "high"}, "stages.finetune.mining.ratio")):
        stage["mining"] = mining
        with pytest.raises(InputError, match=message):
            recipe_from_dict(recipe_dict)
    # rows that carry their own negative texts have no ranked list to walk down
    rows = [{"id": r["id"], "query": r["query"], "positives": r["positives"], "negatives": ["甲", "乙"]}
            for r in read_records(train_data / "finetune/retrieval.jsonl")]
    write_records(tmp_path / "finetune/retrieval.jsonl", rows)
    write_records(tmp_path / "finetune/sts.jsonl", read_records(train_data / "finetune/sts.jsonl"))
    recipe_dict["data"]["dir"] = str(tmp_path)
    with pytest.raises(InputError, match="no retrieval task has rows with candidate ids"):
        _miner(recipe_dict, tmp_path)



def test_dynamic_mining_under_cbb(recipe_dict, tmp_path):
    """With cross-GPU batch balance (2 virtual retrieval ranks sharing out the negatives, an STS rank in
    every step), the ranks' shares come from the row's current set, replaced as a whole."""
    stage = recipe_dict["stages"]["finetune"]
    stage.update(init="model", max_steps=8, composer={"name": "cbb", "retrieval_ranks": 2},
                 checkpoint={"every": 8, "keep": 2}, mining={"mode": "dynamic", "check_every": 3, "min_initial": 2.0})
    stage["tasks"]["retrieval"]["max_rows"] = 12
    recipe = recipe_from_dict(dict(recipe_dict, stages={"finetune": stage}, output_dir=str(tmp_path / "cbb")))
    seen = Collect()
    summary = train_stage(recipe, "finetune", show_progress=False, callbacks=[seen])
    task = load_tasks(recipe.stages["finetune"].tasks, recipe.data.dir)["retrieval"]
    windows = _walk_windows(seen.steps, task, check_every=3, last=8)
    assert max(windows.values()) == 3 and summary["mining"]["retrieval"]["replaced"] == sum(windows.values()) - 12

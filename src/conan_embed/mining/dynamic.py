"""`DynamicHardNegativeMiner`: hard negatives replaced while training, as the model outgrows them.

Conan-Embedding (arXiv 2408.15710, §3.2): every example keeps the mean cosine between its query and
its hard negatives when they were assigned (S_initial) and as training last saw it (S_now). Every
`check_every` steps, each set that `is_exhausted` is replaced by the next window of the example's
ranked candidates (`negative_window`). The choices the paper leaves open are recipe options
(`MiningConfig`, docs/mining.md):

- S_now comes from the loss's own per-example scores (`StepRecord.negative_scores`): no extra pass.
- S_initial is the score the first training step that uses a set records (`initial_score: first_seen`,
  the default): free, and measured the way S_now is, for the initial window (measuring every row up
  front would cost a pass over the whole data set) and for replacements alike. `forward` measures a
  replacement set at check time instead, with one no-grad pass over just the replaced sets under the
  conditions of a training step (train mode, autocast, prompts, caps): the paper's "about one training
  step per check", which grows with the number of sets replaced (docs/mining.md).
- The initial window counts as i = 1, so the r-th replacement takes window i = r + 1 (with a fixed
  ranking the formula's i = 1 would hand back the set just found exhausted). A row's cursor marks its
  next unused candidate: with false-negative filtering (`relative_margin`) a replacement skips the
  likely false negatives and the windows stop being fixed ranks.
- A check judges a row only on a score seen since the previous check (stale rows wait), and the rule
  asks for a drop relative to |S_initial|, so an unchanged negative score is not "exhausted".
- `rule: loss-weight` (ours) judges the margin to the positive in the loss's units instead of raw cosines.
- A row whose list has no full next window keeps its current set and is not checked again
  ("out of candidates").

State lives in arrays per task (11 numbers per row plus the current ids): it holds for millions of rows.
With several processes, each process's observations are gathered and applied in rank order by every
process, the check is a pure function of that state, and the S_initial pass is split across
processes and gathered: every process holds the same negatives (tests/mining/test_distributed.py).
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conan_embed.errors import InputError
from conan_embed.mining.mining_config import MiningConfig
from conan_embed.mining.rule import false_negative_limit, is_exhausted, loss_weight_fell
from conan_embed.training.callbacks import StepRecordCallback
from conan_embed.training.checkpoint import NegativeSource
from conan_embed.training.distributed import gather_objects, rank_and_world, shard, unshard
from conan_embed.training.training_tasks import TrainingTask

STATE_FILE = "dhnm_state.npz"


@dataclass
class NegativeState:
    """One task's mining state, one entry per row."""

    current: np.ndarray  # [R, n] int32 corpus indices of the current hard negatives (-1: row not mined)
    window: np.ndarray  # [R] int32 i of the current window (1 = the initial one; 0 = row not mined)
    s_initial: np.ndarray  # [R] float32, NaN until measured
    s_now: np.ndarray  # [R] float32, NaN until seen in training since the last assignment
    s_positive: np.ndarray  # [R] float32, the latest cos(query, positive)
    s_positive_initial: np.ndarray  # [R] float32, cos(query, positive) when the set was first seen
    finished: np.ndarray  # [R] bool: no full window left; the row keeps its set and is not checked
    cursor: np.ndarray  # [R] int32 rank of the row's next unused candidate
    seen_step: np.ndarray  # [R] int32 the step that recorded s_now (0: not seen since the last assignment)

    FIELDS = ("current", "window", "s_initial", "s_now", "s_positive", "s_positive_initial", "finished", "cursor",
              "seen_step")
    ADDED = ("s_positive_initial", "cursor", "seen_step")  # a state saved before these existed gets them here

    @classmethod
    def initial(cls, task: TrainingTask) -> NegativeState:
        rows, n, skip = len(task), task.config.negatives.count, task.config.negatives.skip_top
        mined = task.candidate_counts > 0
        current = np.full((rows, n), -1, dtype=np.int32)
        current[mined] = task.candidates[mined, skip: skip + n]
        nan = np.full(rows, np.nan, dtype=np.float32)
        cursor = np.where(mined, skip + n, 0).astype(np.int32)
        return cls(current, mined.astype(np.int32), nan.copy(), nan.copy(), nan.copy(), nan.copy(),
                   np.zeros(rows, dtype=bool), cursor, np.zeros(rows, dtype=np.int32))


class DynamicHardNegativeMiner(StepRecordCallback, NegativeSource):
    """Replaces exhausted hard-negative sets during training (see the module docstring); training's
    `NegativeSource`.

    Give it to `ConanTrainer(negatives=...)` (`train_stage` does when the stage's `mining.mode` is
    `dynamic`): the trainer looks every retrieval row's negatives up here at step time, registers it
    as a callback and saves its state in every checkpoint.

    Example (Python API; the recipe form is ``stages.finetune.mining: {mode: dynamic}``)::

        miner = DynamicHardNegativeMiner(tasks, MiningConfig(mode="dynamic", check_every=100))
        miner.lookup("retrieval", (3, 8))      # [2, n] corpus indices of rows 3 and 8's negatives
    """

    state_name = "dynamic hard-negative mining"

    def __init__(self, tasks: dict[str, TrainingTask], config: MiningConfig, *, log_path: str | Path | None = None,
                 key: str = "mining", source=None):
        names = config.tasks if config.tasks is not None else [
            n for n, t in tasks.items() if t.kind == "retrieval" and t.has_candidates]
        for name in names:
            if name not in tasks or not tasks[name].has_candidates:
                raise InputError(f"{key}.tasks: task {name!r} has no rows with candidate ids to mine from "
                                 f"(dynamic mining needs ranked candidates: run `conan-embed mine`)", path=source,
                                 field=f"{key}.tasks")
        if not names:
            raise InputError(f"{key}.mode is dynamic but no retrieval task has rows with candidate ids "
                             f"(run `conan-embed mine` to rank a corpus for them)", path=source, field=f"{key}.mode")
        self.config, self.log_path = config, Path(log_path) if log_path else None
        self.tasks = {n: tasks[n] for n in names}
        self.states = {n: NegativeState.initial(t) for n, t in self.tasks.items()}
        self.totals = {n: {"checks": 0, "replaced": 0, "out_of_candidates": 0, "stale": 0, "false_negatives_dropped": 0,
                           "last_check_step": 0} for n in names}
        self._encode = None

    # -- wiring ------------------------------------------------------------------------------------------
    def attach(self, trainer) -> None:
        """Measure new sets with the trainer's own encoder (its prompts, caps and autocast)."""
        self.attach_encoder(lambda texts, field, task: trainer.embed(trainer.model, texts, field, task))

    def attach_encoder(self, encode) -> None:
        """`encode(texts, field, task) -> [len(texts), D] tensor`, field "query" or "passage", task the
        TrainingTask the texts come from (its length caps)."""
        self._encode = encode

    def lookup(self, task: str, rows) -> np.ndarray | None:
        """[len(rows), n] corpus indices of the rows' current negatives (-1: the row's static ones), or
        None for a task this miner does not manage."""
        state = self.states.get(task)
        return None if state is None else state.current[np.asarray(rows, dtype=np.int64)]

    # -- training-time observations -------------------------------------------------------------------------
    def on_step_records(self, args, state, records) -> None:
        seen = [(r.task, np.asarray(r.rows, dtype=np.int64), r.negative_scores.numpy(), r.positive_scores.numpy())
                for r in records if r.task in self.states and r.negative_scores is not None]
        for shares in gather_objects(seen):  # every process applies every process's records, in rank order
            for task, rows, negative, positive in shares:
                self.observe(task, rows, negative, positive, step=state.global_step)
        # no check at the last step: no later step could train on what it replaced
        if state.global_step % self.config.check_every == 0 and state.global_step < state.max_steps:
            self.check(state.global_step, write_log=state.is_world_process_zero)

    def observe(self, task: str, rows: np.ndarray, negative: np.ndarray, positive: np.ndarray, *, step: int) -> None:
        """Record training scores of `step`: S_now, and S_initial where it was not measured yet."""
        st = self.states[task]
        mined = st.window[rows] > 0
        rows, negative, positive = rows[mined], negative[mined], positive[mined]
        fresh = np.isnan(st.s_initial[rows])
        st.s_initial[rows[fresh]] = negative[fresh]
        st.s_now[rows] = negative
        st.s_positive[rows] = positive
        first = np.isnan(st.s_positive_initial[rows])
        st.s_positive_initial[rows[first]] = positive[first]
        st.seen_step[rows] = step

    # -- the check ---------------------------------------------------------------------------------------
    def exhausted(self, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows checked, rows found exhausted, rows skipped as stale) of one task: the rule on the arrays.

        A row is judged only on a score seen since the previous check (so at most `check_every` steps old);
        a row not seen since then is stale and waits until training sees it again. With every row judged at
        the first check after each time it is seen, no row is judged twice on one score, and none on a score
        from before its last check, however rarely a large data set brings it back."""
        cfg, st = self.config, self.states[task]
        ready = (st.window > 0) & ~st.finished & np.isfinite(st.s_initial) & np.isfinite(st.s_now)
        fresh = st.seen_step > self.totals[task]["last_check_step"]
        checked = ready & fresh
        if cfg.rule == "loss-weight":
            hit = checked & loss_weight_fell(st.s_initial, st.s_now, st.s_positive_initial, st.s_positive,
                                             self.tasks[task].config.loss.temperature, cfg.weight_drop)
        else:
            hit = checked & is_exhausted(st.s_initial, st.s_now, cfg.ratio, cfg.max_score, absolute=cfg.absolute)
        if cfg.min_initial is not None:
            hit |= checked & (st.s_initial < cfg.min_initial)
        return np.flatnonzero(checked), np.flatnonzero(hit), np.flatnonzero(ready & ~fresh)

    def check(self, step: int, *, write_log: bool = True) -> dict[str, dict]:
        """Replace every exhausted set with its row's next negatives; returns (and logs) what happened."""
        events = {}
        for name in self.tasks:
            start_time = time.perf_counter()
            st, totals = self.states[name], self.totals[name]
            checked, rows, stale = self.exhausted(name)
            event = {"step": step, "event": "dhnm", "task": name, "checked": int(len(checked)),
                     "exhausted": int(len(rows)), "stale": int(len(stale)), "s_initial": _mean(st.s_initial[checked]),
                     "s_now": _mean(st.s_now[checked]), "positive": _mean(st.s_positive[checked])}
            if self.config.filters_false_negatives:
                new, cursor, fits, s_initial, dropped = self.next_filtered(name, rows)
            else:
                new, cursor, fits, s_initial, dropped = self.next_window(name, rows)
            out, rows = rows[~fits], rows[fits]
            st.finished[out] = True
            st.current[rows], st.cursor[rows] = new[fits], cursor[fits]
            st.window[rows] += 1
            st.s_now[rows] = np.nan
            st.s_positive[rows] = np.nan
            st.s_positive_initial[rows] = np.nan
            st.seen_step[rows] = 0
            st.s_initial[rows] = s_initial[fits]
            if self.config.initial_score == "forward" and not self.config.filters_false_negatives:
                st.s_initial[rows] = self.measure(name, rows)
            totals["checks"] += 1
            totals["replaced"] += int(len(rows))
            totals["out_of_candidates"] += int(len(out))
            totals["stale"] += int(len(stale))
            totals["false_negatives_dropped"] += dropped
            totals["last_check_step"] = step
            event.update(replaced=int(len(rows)), out_of_candidates=int(len(out)), false_negatives_dropped=dropped,
                         s_initial_new=_mean(st.s_initial[rows]), replaced_total=totals["replaced"],
                         check_s=round(time.perf_counter() - start_time, 3))
            events[name] = event
            if write_log and self.log_path is not None:
                with self.log_path.open("a") as f:
                    f.write(json.dumps(event) + "\n")
        return events

    def next_window(self, task: str, rows: np.ndarray):
        """The next n candidates after each row's cursor: (ids [len, n], new cursors, fits, S_initial, 0)."""
        t, st, n = self.tasks[task], self.states[task], self.tasks[task].config.negatives.count
        begin = st.cursor[rows]
        fits = begin + n <= t.candidate_counts[rows]
        take = np.minimum(begin[:, None] + np.arange(n), t.candidates.shape[1] - 1)
        return t.candidates[rows[:, None], take], begin + n, fits, np.full(len(rows), np.nan, dtype=np.float32), 0

    def next_filtered(self, task: str, rows: np.ndarray):
        """The next n candidates after each row's cursor that are not likely false negatives: a candidate
        whose cosine with the query, by the model as it trains now, exceeds (1 - relative_margin) times the
        row's best positive's or comes within absolute_margin of it is skipped (NV-Retriever's TopK-PercPos).
        One no-grad pass over the rows' queries, positives and candidates (2n at a time), split across
        processes. Returns (ids, new cursors, fits, S_initial = the kept candidates' mean cosine, dropped)."""
        import torch

        t, st, n = self.tasks[task], self.states[task], self.tasks[task].config.negatives.count
        rank, world = rank_and_world()
        mine = shard(rows, rank, world)
        ids = np.full((len(mine), n), -1, dtype=np.int32)
        cursor, s_initial = st.cursor[mine].copy(), np.full(len(mine), np.nan, dtype=np.float32)
        dropped = np.zeros(len(mine), dtype=np.int32)
        if len(mine):
            self._require_encoder()
            with torch.no_grad():
                q = self._embed([t.rows[r]["query"] for r in mine], "query", t)
                positives = [t.rows[r]["positives"] for r in mine]
                p = self._embed([x for ps in positives for x in ps], "passage", t)
                owner = torch.repeat_interleave(torch.tensor([len(ps) for ps in positives]))
                positive = torch.full((len(mine),), -2.0).scatter_reduce(0, owner, (q[owner] * p).sum(-1), "amax")
                limit = false_negative_limit(positive.numpy(), self.config.relative_margin, self.config.absolute_margin)
                kept = [[] for _ in mine]
                scores = [[] for _ in mine]
                todo = np.arange(len(mine))
                while len(todo):
                    pools = [t.candidates[mine[i], cursor[i]: min(cursor[i] + 2 * n, t.candidate_counts[mine[i]])]
                             for i in todo]
                    texts = [t.corpus_texts[j] for pool in pools for j in pool]
                    emb = self._embed(texts, "passage", t) if texts else None
                    at, still = 0, []
                    for i, pool in zip(todo, pools):
                        cos = (emb[at: at + len(pool)] @ q[i]).numpy() if len(pool) else np.zeros(0)
                        at += len(pool)
                        for j, c in zip(pool, cos):
                            cursor[i] += 1
                            if c > limit[i]:
                                dropped[i] += 1
                                continue
                            kept[i].append(j)
                            scores[i].append(c)
                            if len(kept[i]) == n:
                                break
                        if len(kept[i]) < n and cursor[i] < t.candidate_counts[mine[i]]:
                            still.append(i)
                    todo = np.asarray(still, dtype=np.int64)
                for i in range(len(mine)):
                    if len(kept[i]) == n:
                        ids[i], s_initial[i] = kept[i], float(np.mean(scores[i]))
        parts = gather_objects((ids, cursor, s_initial, dropped))
        ids = unshard([x[0] for x in parts], np.zeros((len(rows), n), dtype=np.int32))
        cursor = unshard([x[1] for x in parts], np.zeros(len(rows), dtype=np.int32))
        s_initial = unshard([x[2] for x in parts], np.zeros(len(rows), dtype=np.float32))
        dropped = unshard([x[3] for x in parts], np.zeros(len(rows), dtype=np.int32))
        return ids, cursor, ids[:, 0] >= 0, s_initial, int(dropped.sum())

    def measure(self, task: str, rows: np.ndarray) -> np.ndarray:
        """Mean cosine of each row's query with its current negatives, from one no-grad pass; the rows
        are split across processes and the scores gathered."""
        import torch
        import torch.nn.functional as F

        self._require_encoder()
        t, st, batch = self.tasks[task], self.states[task], self.config.batch_size
        rank, world = rank_and_world()
        mine = shard(rows, rank, world)
        scores = np.zeros(len(mine), dtype=np.float32)
        with torch.no_grad():
            for at in range(0, len(mine), batch):
                chunk = mine[at: at + batch]
                ids = st.current[chunk]
                q = F.normalize(self._encode([t.rows[r]["query"] for r in chunk], "query", t).float(), dim=-1)
                d = self._encode([t.corpus_texts[j] for j in ids.ravel()], "passage", t).float()
                d = F.normalize(d, dim=-1).reshape(len(chunk), ids.shape[1], -1)
                scores[at: at + len(chunk)] = torch.einsum("bd,bkd->bk", q, d).mean(1).cpu().numpy()
        return unshard(gather_objects(scores), np.zeros(len(rows), dtype=np.float32))

    def _embed(self, texts: list[str], field: str, task) -> "torch.Tensor":
        """Normalised float32 embeddings on the CPU, encoded batch_size x (1 + n) texts at a time (the size of
        one measuring pass)."""
        import torch
        import torch.nn.functional as F

        chunk = self.config.batch_size * (1 + task.config.negatives.count)
        return torch.cat([F.normalize(self._encode(texts[at: at + chunk], field, task).float(), dim=-1).cpu()
                          for at in range(0, len(texts), chunk)])

    def _require_encoder(self):
        if self._encode is None:
            raise RuntimeError("DynamicHardNegativeMiner needs an encoder (attach it to a ConanTrainer)")

    # -- checkpoint state (training.checkpoint.TrainingState) ---------------------------------------------------
    def save(self, folder: Path) -> None:
        arrays = {f"{name}/{field}": getattr(st, field) for name, st in self.states.items()
                  for field in NegativeState.FIELDS}
        arrays["totals"] = np.array(json.dumps(self.totals))
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        path = Path(folder) / STATE_FILE
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)

    def load(self, folder: Path) -> None:
        path = Path(folder) / STATE_FILE
        with np.load(path) as data:
            for name, st in self.states.items():
                for field in NegativeState.FIELDS:
                    key = f"{name}/{field}"
                    if key not in data and field in NegativeState.ADDED:
                        continue
                    if key not in data or data[key].shape != getattr(st, field).shape:
                        raise InputError(f"saved mining state does not fit this stage's data ({key}); pass "
                                         f"--overwrite to start the stage again", path=path)
                    setattr(st, field, data[key].copy())
            for name, st in self.states.items():
                if f"{name}/cursor" not in data:
                    task = self.tasks[name].config.negatives
                    st.cursor = np.where(st.window > 0, st.window * task.count + task.skip_top, 0).astype(np.int32)
            self.totals = {name: {**self.totals[name], **saved}
                           for name, saved in json.loads(str(data["totals"])).items()}

    # -- reporting ---------------------------------------------------------------------------------------
    def summary(self) -> dict[str, dict]:
        out = {}
        for name, st in self.states.items():
            mined = st.window > 0
            out[name] = {**self.totals[name], "rows": int(mined.sum()),
                         "rows_replaced": int((st.window > 1).sum()), "deepest_window": int(st.window.max(initial=0)),
                         "rows_out_of_candidates": int(st.finished.sum())}
        return out


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return round(float(finite.mean()), 5) if len(finite) else None

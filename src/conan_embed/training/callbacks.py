"""Training callbacks: step records for listeners, a progress bar, log.jsonl, the loss curve.

Each micro-batch's `StepRecord` (ids, per-example scores, loss) reaches every `StepRecordCallback` at
the end of its optimizer step, before checkpointing, so a listener that keeps state (hard-negative
mining) can store it with the checkpoint. The monitor below is itself such a listener: it measures
throughput from the records it is handed.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections import defaultdict
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainerCallback

from conan_embed.errors import InputError
from conan_embed.files import write_text_atomic
from conan_embed.training.plots import plot_hard_negative_scores, plot_loss_curve


class StepRecordCallback(TrainerCallback):
    """Subclass and implement `on_step_records` to see every example of every step."""

    def on_step_records(self, args, state, records) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class StepRecordDispatcher(TrainerCallback):
    """Hands the trainer's records of the finished step to every StepRecordCallback, then drops them."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        records = [r.to_cpu() for r in self.trainer.step_records]  # after the optimizer step: no stall
        self.trainer.step_records.clear()
        for callback in self.trainer.callback_handler.callbacks:
            if isinstance(callback, StepRecordCallback):
                callback.on_step_records(args, state, records)


class SaveFinalCheckpoint(TrainerCallback):
    """A checkpoint at the last step too, whatever `save_steps` is (so a finished stage can be resumed
    into a longer one and its final state is never lost)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True


class StopAfterStep(TrainerCallback):
    """Ends training cleanly after `step` (used by `--stop-after` to split a run, and by tests)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_save = True
            control.should_training_stop = True


def read_log(path: str | Path, event: str | None = None) -> list[dict]:
    """log.jsonl's step lines (event None), or the lines of one event kind (e.g. "dhnm": mining checks)."""
    return [r for r in _read_lines(path) if r.get("event") == event]


def _read_lines(path: str | Path) -> list[dict]:
    """The log's records. A last line cut short (a crash during its append) is dropped with a warning: the
    resumed run writes its step again. A bad line before the last is damage this code did not do: an error."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number < len(lines):
                raise InputError(f"not a JSON line ({err.msg}); the log is damaged: move it away to start it again",
                                 path=path, row=number) from None
            warnings.warn(f"{path}: dropped its last line, cut short (an interrupted write): {line[:60]!r}",
                          stacklevel=2)
    return records


def truncate_log(path: str | Path, last_step: int) -> None:
    """Drop the lines after `last_step` (a resumed run writes them again)."""
    path = Path(path)
    if path.is_file():
        kept = [json.dumps(r) for r in _read_lines(path) if r.get("step", 0) <= last_step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))


class TrainingMonitor(StepRecordCallback):
    """Progress bar (loss, pairs/s), one log.jsonl line per logged step, loss.png at the end, and for
    retrieval tasks the mean positive and hard-negative scores per line and negatives.png (Figure 3).

    pairs/s counts training examples (queries, or sentence pairs for STS) per second of wall time.
    """

    def __init__(self, log_path: str | Path, plot_path: str | Path, *, title: str = "", show_progress: bool = True):
        self.log_path, self.plot_path, self.title = Path(log_path), Path(plot_path), title
        self.show_progress = show_progress
        self.bar = None
        self.ema_loss = None
        self._reset_window()

    def _reset_window(self):
        self.window_examples, self.window_start = 0, time.perf_counter()
        self.task_loss = defaultdict(float)
        self.task_batches = defaultdict(int)
        self.task_scores = defaultdict(lambda: [0.0, 0.0, 0])  # positive sum, hard-negative sum, examples

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
        self.step_start = time.perf_counter()
        self.start_step = state.global_step
        self._reset_window()
        if self.show_progress and state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.title or "train",
                            unit="step", dynamic_ncols=True)

    def on_step_records(self, args, state, records):
        now = time.perf_counter()
        examples = sum(r.size for r in records)
        self.window_examples += examples
        for r in records:
            self.task_loss[r.task] += r.loss
            self.task_batches[r.task] += 1
            if r.negative_scores is not None:
                scores = self.task_scores[r.task]
                scores[0] += float(r.positive_scores.sum())
                scores[1] += float(r.negative_scores.sum())
                scores[2] += r.size
        step_loss = sum(r.loss for r in records) / max(len(records), 1)
        if math.isfinite(step_loss):
            self.ema_loss = step_loss if self.ema_loss is None else 0.9 * self.ema_loss + 0.1 * step_loss
        rate = examples / max(now - self.step_start, 1e-9)
        self.step_start = now
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.ema_loss:.4f}" if self.ema_loss is not None else "nan",
                                 task="+".join(dict.fromkeys(r.task for r in records)), pairs_s=f"{rate:.1f}",
                                 refresh=False)
            self.bar.update(1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs or not state.is_world_process_zero:
            return
        now = time.perf_counter()
        line = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "loss": logs["loss"],
                "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm")}
        line.update({f"loss/{t}": self.task_loss[t] / self.task_batches[t] for t in sorted(self.task_loss)})
        for t, (positive, negative, n) in sorted(self.task_scores.items()):  # Figure 3's two curves
            line[f"score/{t}/positive"], line[f"score/{t}/negative"] = round(positive / n, 5), round(negative / n, 5)
        line["pairs_per_s"] = round(self.window_examples / max(now - self.window_start, 1e-9), 3)
        line["elapsed_s"] = round(now - self.start, 2)
        with self.log_path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        self._reset_window()

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if state.is_world_process_zero:
            steps = read_log(self.log_path)
            plot_loss_curve({"": steps}, self.plot_path, self.title)
            plot_hard_negative_scores({"": {"steps": steps, "checks": read_log(self.log_path, "dhnm")}},
                                      self.plot_path.with_name("negatives.png"), f"{self.title}: hard negatives")

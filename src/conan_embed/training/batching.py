"""Batch composition: the one pluggable object that decides which rows of which task form each step.

A composer is a torch batch sampler whose batches are ``[StepPlan]`` (one plan per micro-batch): the
DataLoader carries plans only and the trainer turns a plan into texts at step time. A composer must be
deterministic in ``(seed, epoch)``: resuming re-walks the epoch and skips the batches already trained.

``SequentialTasks`` is the paper's vanilla multi-task baseline: the tasks take turns step by step, one
task per optimizer step (the gradient-accumulation micro-batches of a step stay on one task). The
cross-GPU batch balance composer (every step holds every task) plugs in beside it.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

from conan_embed.training.tasks import StepPlan, TrainingTask


def deduplicated_batches(task: TrainingTask, order: list[int], batch_size: int) -> list[tuple[int, ...]]:
    """Consecutive batches of `order`; a row whose conflict key is already in its batch is left out of
    that batch (it would be an in-batch negative of its own duplicate). Only full-size batches count
    before dropping, so the number of batches is fixed by the data size."""
    batches = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        seen, rows = set(), []
        for i in order[start: start + batch_size]:
            keys = task.conflict_keys(i)
            if seen.isdisjoint(keys):
                rows.append(i)
                seen.update(keys)
        batches.append(tuple(rows))
    return batches


class BatchComposer(Sampler):
    """Base class: yields ``[StepPlan]`` per micro-batch; ``batch_size`` = 1 plan per batch (what
    accelerate's batch-sampler sharding reads)."""

    batch_size = 1
    drop_last = True

    def __init__(self, tasks: dict[str, TrainingTask], *, seed: int, grad_accum: int = 1, world_size: int = 1):
        if not tasks:
            raise ValueError("a composer needs at least one task")
        self.tasks, self.seed, self.grad_accum, self.epoch = tasks, seed, grad_accum, 0
        # accelerate hands batch i to rank i mod world_size: a step is grad_accum x world_size plans
        self.world_size = world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def plans_per_step(self) -> int:
        return self.grad_accum * self.world_size


class SequentialTasks(BatchComposer):
    """Tasks take turns: step 1 task A, step 2 task B, ... An epoch ends when the task with the fewest
    full steps runs out; each task's rows are reshuffled every epoch (seeded by seed + epoch)."""

    name = "sequential"

    def _steps_per_task(self) -> int:
        return min(len(t) // t.config.batch_size for t in self.tasks.values()) // self.plans_per_step

    def __len__(self) -> int:
        return self._steps_per_task() * self.plans_per_step * len(self.tasks)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        batches = {}
        for name, task in self.tasks.items():
            order = torch.randperm(len(task), generator=generator).tolist()
            batches[name] = deduplicated_batches(task, order, task.config.batch_size)
        k = self.plans_per_step
        for step in range(self._steps_per_task()):
            for name in self.tasks:  # every rank and micro-batch of a step trains the same task
                for i in range(k):
                    yield [StepPlan(name, batches[name][step * k + i], self.epoch)]


COMPOSERS = {SequentialTasks.name: SequentialTasks}


def build_composer(name: str, tasks: dict[str, TrainingTask], *, seed: int, grad_accum: int,
                   world_size: int = 1) -> BatchComposer:
    return COMPOSERS[name](tasks, seed=seed, grad_accum=grad_accum, world_size=world_size)

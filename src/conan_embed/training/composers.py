"""Batch composition: the one pluggable object that decides which rows of which task form each step.

A composer is a torch batch sampler whose batches are ``[(StepPlan, ...)]``: per micro-batch and
process, the plans of the tasks that process trains (one for sequential tasks, one per task for CBB).
The DataLoader carries plans only and the trainer turns them into texts at step time. Accelerate hands
batch i to process i mod W, so a composer yields the W processes' batches of a micro-batch in rank
order. A composer must be deterministic in ``(seed, epoch)``: resuming re-walks the epoch and skips
the batches already trained.

- ``SequentialTasks``: the paper's vanilla multi-task baseline. Tasks take turns step by step, one task
  per optimizer step (every process and micro-batch of a step trains that task). A task with in-batch
  negatives across processes gets global batches of W · batch_size rows, split in rank order.
- ``CrossGPUBatchBalance``: every step holds every task (Conan-Embedding §3.3). Retrieval ranks get the
  same rows and different shares of their hard negatives; STS ranks get STS batches (`cbb_roles`).
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

from conan_embed.losses import cbb_step_loss
from conan_embed.training.training_config import ComposerConfig, in_batch_scope
from conan_embed.training.distributed import cbb_roles, split_global_batch
from conan_embed.training.training_tasks import StepPlan, TrainingTask


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

    def __init__(self, tasks: dict[str, TrainingTask], *, seed: int, grad_accum: int = 1, world_size: int = 1,
                 config: ComposerConfig | None = None):
        if not tasks:
            raise ValueError("a composer needs at least one task")
        self.tasks, self.seed, self.grad_accum, self.epoch = tasks, seed, grad_accum, 0
        # accelerate hands batch i to rank i mod world_size: a step is grad_accum x world_size plans
        self.world_size = world_size
        self.config = config or ComposerConfig(name=self.name)

    def global_batch(self, task: TrainingTask) -> bool:
        """Whether the task's in-batch negatives span every process: its batches are then formed (and
        deduplicated) W at a time and shared out, so W processes see one process's W-times batch."""
        return self.world_size > 1 and in_batch_scope(task.config, self.config.name) == "global"

    def batch_count(self, task: TrainingTask) -> int:
        """Batches (one per process and micro-batch) the task's rows give each epoch."""
        if self.global_batch(task):
            return len(task) // (task.config.batch_size * self.world_size) * self.world_size
        return len(task) // task.config.batch_size

    def _batches(self) -> dict[str, list[tuple[int, ...]]]:
        """Each task's batches of this epoch: a fresh permutation of its rows, seeded by seed + epoch."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        batches = {}
        for name, task in self.tasks.items():
            order = torch.randperm(len(task), generator=generator).tolist()
            if self.global_batch(task):
                batches[name] = [part for rows in deduplicated_batches(task, order, task.config.batch_size * self.world_size)
                                 for part in split_global_batch(rows, self.world_size)]
            else:
                batches[name] = deduplicated_batches(task, order, task.config.batch_size)
        return batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def plans_per_step(self) -> int:
        return self.grad_accum * self.world_size

    # -- how a step's loss is built: the trainer asks the composer, so it has no branch per composer --
    backward_per_part = False  # the trainer may run one backward per task of a micro-batch (one process)

    def loss_name(self, task: TrainingTask) -> str:
        """The registered loss (conan_embed.losses.build_loss) the task trains with: its `loss.name`."""
        return task.config.loss.name

    def step_loss(self, trainer, model, parts: tuple[StepPlan, ...]) -> torch.Tensor:
        """The micro-batch's loss: one plan, one task's loss (`trainer.plan_loss`)."""
        (plan,) = parts
        return trainer.plan_loss(model, plan)


class SequentialTasks(BatchComposer):
    """Tasks take turns: step 1 task A, step 2 task B, ... An epoch ends when the task with the fewest
    full steps runs out; each task's rows are reshuffled every epoch (seeded by seed + epoch)."""

    name = "sequential"

    def _steps_per_task(self) -> int:
        return min(self.batch_count(t) for t in self.tasks.values()) // self.plans_per_step

    def __len__(self) -> int:
        return self._steps_per_task() * self.plans_per_step * len(self.tasks)

    def __iter__(self):
        batches = self._batches()
        k = self.plans_per_step
        for step in range(self._steps_per_task()):
            for name in self.tasks:  # every rank and micro-batch of a step trains the same task
                for i in range(k):
                    yield [(StepPlan(name, batches[name][step * k + i], self.epoch),)]


class CrossGPUBatchBalance(BatchComposer):
    """Every step holds every task. Per micro-batch: every retrieval task's next batch of rows, given to
    every retrieval rank with that rank's share of each row's hard negatives, and S STS batches of every
    STS task, one per STS rank. With one process, one batch holds every role (virtual ranks). An epoch
    ends when a task runs out of full batches (an STS task uses S batches a step)."""

    name = "cbb"

    def __init__(self, tasks: dict[str, TrainingTask], **kwargs):
        super().__init__(tasks, **kwargs)
        self.roles = cbb_roles(self.world_size, self.config.sts_ranks, self.config.retrieval_ranks)
        self.shares = sum(len(r.negative_shares) for r in self.roles)  # N: retrieval ranks, real or virtual

    def _uses(self, task: TrainingTask) -> int:
        return self.config.sts_ranks if task.kind == "sts" else 1

    @property
    def backward_per_part(self) -> bool:
        """One process playing every rank: one backward per task gives the summed loss's gradients with one
        task's activations held at a time. Several processes: DDP all-reduces on every backward."""
        return len(self.roles) == 1

    def loss_name(self, task: TrainingTask) -> str:
        """Retrieval tasks train with CBB's retrieval term (negatives shared out across ranks)."""
        return "cbb" if task.kind == "retrieval" else super().loss_name(task)

    def step_loss(self, trainer, model, parts: tuple[StepPlan, ...]) -> torch.Tensor:
        """A cross-GPU batch balance micro-batch on this process (docs/cbb.md): each task's weighted term,
        composed and scaled for this process by `cbb_step_loss`."""
        roles, config = self.roles, self.config
        world = len(roles)
        # STS first: on an STS rank the gathers below then come last in the graph and first in backward
        sts = [trainer.plan_loss(model, plan) for plan in parts if self.tasks[plan.task].kind == "sts"]
        retrieval = []
        mine = {p.task: p for p in parts}
        for task in (t for t in self.tasks.values() if t.kind == "retrieval"):
            if task.name not in mine:
                if world > 1:  # an STS rank: its zeros join the gather, so every process runs the same collectives
                    placeholder = 0.0 * trainer.gather_shares(None, task).sum()
                    if trainer.cached(task):  # the retrieval ranks back-propagate through this gather now
                        placeholder.backward()
                        placeholder = placeholder.detach()
                    retrieval.append(placeholder)
                continue
            plan = mine[task.name]
            _, batch = trainer.plan_texts(plan)
            cache = trainer.grad_cache(model, task)
            emb = trainer.encode_batch(model, task, batch, cache)
            b, dim = emb["query"].shape
            # [B, L·K, D] (share-major per row) -> [L, B, K, D]
            local = emb["negatives"].reshape(b, len(plan.shares), -1, dim).transpose(0, 1)
            negatives = local if world == 1 else trainer.gather_shares(local, task)[:, :b]
            out = trainer.loss.task_losses[task.name].details(emb["query"], emb["positive"], negatives)
            loss = task.config.loss.weight * out.loss
            trainer.record(task, plan, batch, loss, out)
            retrieval.append(cache.attach(loss) if cache is not None else loss)
        return cbb_step_loss(retrieval, sts, beta=config.beta, sts_batches=config.sts_ranks, processes=world,
                             retrieval_processes=sum(r.retrieval for r in roles))

    def _steps(self) -> int:
        return min(len(t) // t.config.batch_size // self._uses(t) for t in self.tasks.values()) // self.grad_accum

    def __len__(self) -> int:
        return self._steps() * self.grad_accum * self.world_size

    def __iter__(self):
        batches = self._batches()
        for micro in range(self._steps() * self.grad_accum):
            for role in self.roles:  # in rank order
                parts = []
                for name, task in self.tasks.items():
                    if task.kind == "sts":
                        parts += [StepPlan(name, batches[name][micro * self.config.sts_ranks + j], self.epoch)
                                  for j in role.sts_batches]
                    elif role.retrieval:
                        parts.append(StepPlan(name, batches[name][micro], self.epoch, role.negative_shares,
                                              self.shares))
                yield [tuple(parts)]


COMPOSERS = {SequentialTasks.name: SequentialTasks, CrossGPUBatchBalance.name: CrossGPUBatchBalance}


def build_composer(config: ComposerConfig, tasks: dict[str, TrainingTask], *, seed: int, grad_accum: int,
                   world_size: int = 1) -> BatchComposer:
    return COMPOSERS[config.name](tasks, seed=seed, grad_accum=grad_accum, world_size=world_size, config=config)

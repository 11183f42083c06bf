"""`ConanTrainer`: the sentence-transformers Trainer with our data path.

Everything else comes from Hugging Face (AdamW with linear warmup, bf16/fp16 autocast, gradient
accumulation and clipping, activation checkpointing, DeepSpeed, checkpoints with optimizer, scheduler
and RNG state, exact skip-ahead on resume). What we replace (docs/design-training.md §1):

- the DataLoader yields plans from a pluggable `BatchComposer`, not tokenised columns: per process and
  micro-batch, one plan per task it trains (one task in turn, or every task with cross-GPU batch balance);
- `compute_loss` asks the composer for the micro-batch's loss (`BatchComposer.step_loss`): plans become
  texts now (hard negatives looked up at step time), each field is tokenised with its own length cap
  and prompt and embedded, and each task's loss module comes from the registry in losses/
  (`task_loss_module`; with cbb, every retrieval rank's negatives are gathered first);
- every micro-batch leaves a `StepRecord` (ids, per-example positive and hard-negative cosines, loss)
  for callbacks: hard-negative mining reads them without a second forward pass;
- a task whose loss sets `mini_batch_size` embeds through GradCache (`training.gradcache`), and a task
  with in-batch negatives across processes (`in_batch_scope` "global") gathers every process's
  positives and negatives before its loss (`gather_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformerTrainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from transformers.trainer_callback import PrinterCallback

from conan_embed.files import write_json
from conan_embed.losses import MatryoshkaLoss, build_loss
from conan_embed.modeling import CONAN_CONFIG, own_storage, text_prompt
from conan_embed.training.composers import BatchComposer
from conan_embed.training.callbacks import StepRecordDispatcher
from conan_embed.training.checkpoint import NegativeSource, load_checkpoint_extras, save_checkpoint_extras
from conan_embed.training.training_config import in_batch_scope
from conan_embed.training.distributed import gather_rows, gather_with_grad, pad_rows
from conan_embed.training.gradcache import CachedEmbeddings
from conan_embed.training.training_tasks import StepPlan, TaskBatch, TrainingTask


@dataclass
class StepRecord:
    """What one micro-batch left behind, for callbacks (detached; on the CPU by the time a callback
    sees it)."""

    task: str
    rows: tuple[int, ...]
    ids: list
    loss: float  # a detached tensor until `to_cpu`
    positive_scores: Tensor | None = None  # [B] cos(q_i, p_i) at the full dim
    negative_scores: Tensor | None = None  # [B] mean cos(q_i, n_ik) over the row's hard negatives
    negative_ids: list[list] | None = None

    @property
    def size(self) -> int:
        return len(self.rows)

    def to_cpu(self) -> StepRecord:
        def cpu(x):
            return None if x is None else x.float().cpu()

        loss = float(self.loss) if isinstance(self.loss, Tensor) else self.loss
        return StepRecord(self.task, self.rows, self.ids, loss, cpu(self.positive_scores),
                          cpu(self.negative_scores), self.negative_ids)


def task_loss_module(task: TrainingTask, dims, composer: BatchComposer) -> MatryoshkaLoss:
    """A task's loss from the registry (`losses.build_loss`: the name the composer gives it, which is
    the task's `loss.name` unless the composer trains the task its own way), wrapped in Matryoshka."""
    in_batch = in_batch_scope(task.config, composer.config.name) != "none"
    return MatryoshkaLoss(build_loss(composer.loss_name(task), task.config.loss, in_batch=in_batch), sorted(dims))


class ConanLoss(nn.Module):
    """Holds the model (sentence-transformers builds the optimizer from the loss module's parameters)
    and each task's loss module (`task_loss_module`)."""

    def __init__(self, model: nn.Module, dims, tasks: dict[str, TrainingTask], composer: BatchComposer):
        super().__init__()
        self.model, self.dims = model, tuple(dims)
        self.task_losses = {name: task_loss_module(t, self.dims, composer) for name, t in tasks.items()}


class _PlanDataset(Dataset):
    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, plan: StepPlan) -> StepPlan:
        return plan


def _collate_plan(items: list[StepPlan]) -> dict:
    return {"plan": items[0]}


class ConanTrainer(SentenceTransformerTrainer):
    """`negatives`: a `training.checkpoint.NegativeSource`, where retrieval rows' hard negatives come
    from at step time (None = each row's static window). It is also registered as a callback and, with
    anything in `states`, saved in every checkpoint and restored on resume (`TrainingState`)."""

    def __init__(self, *, tasks: dict[str, TrainingTask], composer: BatchComposer, max_length: dict[str, int],
                 prompts: dict[str, str], checkpoint_info: dict | None = None, negatives=None, states=(),
                 **kwargs):
        self.tasks, self.composer = tasks, composer
        self.max_length = max_length
        self.field_prompts = {field: text_prompt(prompts, field) for field in ("query", "passage")}
        self.checkpoint_info = checkpoint_info or {}
        self.step_records: list[StepRecord] = []
        if negatives is not None and not isinstance(negatives, NegativeSource):
            raise TypeError(f"negatives must implement training.checkpoint.NegativeSource (attach, lookup, save, "
                            f"load, state_name), got {type(negatives).__name__}")
        self.negatives = negatives
        self.training_states = [*states, *([negatives] if negatives is not None else [])]
        callbacks = kwargs.pop("callbacks", None) or []
        if negatives is not None:
            callbacks = [negatives, *callbacks]
        super().__init__(callbacks=[StepRecordDispatcher(self), *callbacks], **kwargs)
        self.remove_callback(PrinterCallback)  # prints every log dict; TrainingMonitor writes log.jsonl
        if negatives is not None:
            negatives.attach(self)

    def train(self, resume_from_checkpoint=None, **kwargs):
        if resume_from_checkpoint:
            load_checkpoint_extras(resume_from_checkpoint, self.training_states)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def get_train_dataloader(self):
        loader = DataLoader(_PlanDataset(len(self.composer)), batch_sampler=self.composer,
                            collate_fn=_collate_plan, num_workers=0)
        self._train_dataloader = self.accelerator.prepare(loader)
        return self._train_dataloader

    def embed(self, model, texts: list[str], field: str, task: TrainingTask | None = None,
              cache: CachedEmbeddings | None = None) -> Tensor:
        """`texts` of one field ("query" or "passage") through `model`, capped as the stage says or as
        `task` overrides it (e.g. long classification passages, whose label shows in the first tokens).
        With a GradCache `cache`: embedded in its mini-batches without gradients (`gradcache`)."""
        if cache is not None:
            return cache.embed(texts, model, field, task)
        return self._forward_texts(texts, model, field, task)

    def _forward_texts(self, texts: list[str], model, field: str, task: TrainingTask | None = None) -> Tensor:
        caps = {**self.max_length, **task.config.max_length} if task is not None else self.max_length
        features = self.model.preprocess(texts, prompt=self.field_prompts.get(field), max_length=caps[field])
        features = {k: v.to(self.args.device) if isinstance(v, Tensor) else v for k, v in features.items()}
        return model(features)["sentence_embedding"]

    def cached(self, task: TrainingTask) -> bool:
        return task.config.loss.mini_batch_size is not None

    def grad_cache(self, model, task: TrainingTask) -> CachedEmbeddings | None:
        """A GradCache for this task's micro-batch, when its loss sets `mini_batch_size` and gradients are on."""
        if not self.cached(task) or not torch.is_grad_enabled():
            return None
        return CachedEmbeddings(self._forward_texts, task.config.loss.mini_batch_size, model=model,
                                device_type=self.args.device.type)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """With one process playing every CBB rank, one backward per task: the gradients add up to those of
        the summed loss, and only one task's activations are held at a time (3 tasks: a third of the
        memory, and faster on CPUs). Several processes (DDP all-reduces on every backward) and DeepSpeed
        (which counts backward calls as micro-batches) take the whole micro-batch in one backward."""
        parts = inputs["plan"]
        if self._ddp_with_cache(model):
            return self._training_step_synced_once(model, inputs, num_items_in_batch)
        if not self.composer.backward_per_part or len(parts) == 1 or self.is_deepspeed_enabled:
            return super().training_step(model, inputs, num_items_in_batch)
        return sum(super(ConanTrainer, self).training_step(model, {"plan": (plan,)}, num_items_in_batch)
                   for plan in parts)

    def _ddp_with_cache(self, model) -> bool:
        return (isinstance(model, torch.nn.parallel.DistributedDataParallel)
                and any(self.cached(t) for t in self.tasks.values()))

    def _training_step_synced_once(self, model, inputs, num_items_in_batch):
        """DDP with cached losses: the GradCache replays are backward passes of their own, inside the
        trainer's backward. All of them run in `no_sync`, then one pass with a zero gradient makes DDP
        all-reduce what they accumulated: the same number of all-reduces on every rank, whatever each
        rank's tasks and mini-batch counts."""
        sync = model.require_backward_grad_sync
        with model.no_sync():
            loss = super().training_step(model, inputs, num_items_in_batch)
        if sync:
            with self.compute_loss_context_manager():
                probe = self.embed(model, ["."], "query")
            self.accelerator.backward(probe.sum() * 0.0)
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.composer.step_loss(self, model, inputs["plan"])
        return (loss, {}) if return_outputs else loss

    def plan_texts(self, plan: StepPlan) -> tuple[TrainingTask, TaskBatch]:
        """The plan's texts, with the hard negatives the miner holds now (or the static ones)."""
        task = self.tasks[plan.task]
        negatives = self.negatives.lookup(plan.task, plan.rows) if self.negatives is not None else None
        return task, task.texts(plan, negatives)

    def encode_batch(self, model, task: TrainingTask, batch: TaskBatch,
                     cache: CachedEmbeddings | None = None) -> dict[str, Tensor]:
        n = len(batch.queries)
        if task.kind == "sts":
            # one encoder pass for both sides (same prompt and cap): half the embedding-table gradients
            both = self.embed(model, batch.queries + batch.passages, "query", task, cache)
            return {"sts_a": both[:n], "sts_b": both[n:], "labels": torch.tensor(batch.labels, device=both.device)}
        q = self.embed(model, batch.queries, "query", task, cache)
        # positives and hard negatives share the passage prompt and cap: one pass, as MNRL does
        flat = [text for row in batch.negatives for text in row] if batch.negatives is not None else []
        docs = self.embed(model, batch.passages + flat, "passage", task, cache)
        return {"query": q, "positive": docs[:n],
                "negatives": docs[n:].reshape(n, -1, q.shape[-1]) if flat else None}

    def record(self, task: TrainingTask, plan: StepPlan, batch: TaskBatch, loss: Tensor, out) -> None:
        # tensors stay on the device: moving them to the CPU here would make a GPU wait before backward
        scores = getattr(out, "negative_scores", None) is not None
        self.step_records.append(StepRecord(task.name, plan.rows, batch.ids, loss.detach(),
                                            out.positive_scores if scores else None,
                                            out.negative_scores if scores else None,
                                            batch.negative_ids if scores else None))

    def plan_loss(self, model, plan: StepPlan) -> Tensor:
        """One task's micro-batch: a sequential step, or one STS batch of a CBB step."""
        task, batch = self.plan_texts(plan)
        cache = self.grad_cache(model, task)
        emb, loss_fn = self.encode_batch(model, task, batch, cache), self.loss.task_losses[task.name]
        scale = 1.0
        if task.kind == "sts":
            out = loss_fn.details(emb["sts_a"], emb["sts_b"], emb["labels"])
        elif self.global_in_batch(task):
            positive, negatives, offset, valid, scale = gather_rows(emb["positive"], emb["negatives"],
                                                                    task.config.batch_size, group=self.gather_group)
            out = loss_fn.details(emb["query"], positive, negatives, offset=offset, valid=valid)
        else:
            out = loss_fn.details(emb["query"], emb["positive"], emb["negatives"])
        loss = task.config.loss.weight * out.loss
        self.record(task, plan, batch, loss, out)
        loss = scale * loss
        return cache.attach(loss) if cache is not None else loss

    def global_in_batch(self, task: TrainingTask) -> bool:
        return (self.composer.world_size > 1 and task.kind != "sts"
                and in_batch_scope(task.config, self.composer.config.name) == "global")

    @property
    def gather_group(self):
        """A process group of its own for the loss's gathers: DDP's gradient all-reduce runs on the default
        one, in an order that differs between ranks whose steps differ (CBB's retrieval and STS ranks)."""
        import torch.distributed as dist

        if getattr(self, "_gather_group", None) is None:
            self._gather_group = dist.new_group()
        return self._gather_group

    def gather_shares(self, local: Tensor | None, task: TrainingTask) -> Tensor:
        """[N, batch_size, K, D]: every retrieval rank's share of its rows' negatives, with gradients, on
        `gather_group`. Rows are padded to the task's batch size."""
        shape = (1, task.config.batch_size, task.config.negatives.count // self.composer.shares,
                 self.model.get_embedding_dimension())
        if local is None:
            padded = torch.zeros(shape, device=self.args.device, requires_grad=True)
        else:
            padded = pad_rows(local.float(), shape[1], dim=1)
        gathered = gather_with_grad(padded, group=self.gather_group)  # [W, 1, B, K, D]
        return gathered[: self.composer.shares, 0]

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        with own_storage(self.model):
            super()._save(output_dir, state_dict)
        folder = Path(output_dir if output_dir is not None else self.args.output_dir)
        write_json(folder / CONAN_CONFIG, {"matryoshka_dims": list(self.loss.dims)})

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if not self.args.should_save:
            return
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        save_checkpoint_extras(folder, self.training_states, {"global_step": self.state.global_step,
                                                              **self.checkpoint_info})

"""`ConanTrainer`: the sentence-transformers Trainer with our data path.

Everything else comes from Hugging Face (AdamW with linear warmup, bf16/fp16 autocast, gradient
accumulation and clipping, activation checkpointing, DeepSpeed, checkpoints with optimizer, scheduler
and RNG state, exact skip-ahead on resume). What we replace (docs/design-training.md §1):

- the DataLoader yields plans from a pluggable `BatchComposer`, not tokenised columns;
- `compute_loss` turns a plan into texts now (hard negatives looked up at step time), tokenises each
  field with its own length cap and prompt, embeds, and calls our embedding-level losses;
- every micro-batch leaves a `StepRecord` (ids, per-example positive and hard-negative cosines, loss)
  for callbacks: hard-negative mining reads them without a second forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformerTrainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from transformers.trainer_callback import PrinterCallback

from conan_embed.files import write_json
from conan_embed.losses import cosent, info_nce_details
from conan_embed.losses.infonce import InfoNCEOutput
from conan_embed.modeling import CONAN_CONFIG, text_prompt
from conan_embed.training.batching import BatchComposer
from conan_embed.training.callbacks import StepRecordDispatcher
from conan_embed.training.checkpoint import load_checkpoint_extras, save_checkpoint_extras
from conan_embed.training.tasks import StepPlan, TaskBatch, TrainingTask


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


def _truncate(x: Tensor | None, dim: int) -> Tensor | None:
    return None if x is None else F.normalize(x[..., :dim], dim=-1)


def matryoshka_info_nce(query: Tensor, positive: Tensor, negatives: Tensor | None, dims, temperature: float,
                        ) -> tuple[Tensor, InfoNCEOutput]:
    """Σ_d InfoNCE at each Matryoshka dim (= MatryoshkaLoss(InfoNCELoss)), plus the per-example scores
    of the largest dim from the same pass."""
    total, out = 0.0, None
    for dim in sorted(dims):
        out = info_nce_details(_truncate(query, dim), _truncate(positive, dim), _truncate(negatives, dim),
                               temperature)
        total = total + out.loss
    return total, out


def matryoshka_cosent(emb1: Tensor, emb2: Tensor, labels: Tensor, dims, scale: float) -> Tensor:
    return sum(cosent(_truncate(emb1, d), _truncate(emb2, d), labels, scale) for d in sorted(dims))


class ConanLoss(nn.Module):
    """Holds the model: sentence-transformers builds the optimizer from the loss module's parameters."""

    def __init__(self, model: nn.Module, dims):
        super().__init__()
        self.model, self.dims = model, tuple(dims)


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
    """`negatives`: where retrieval rows' hard negatives come from at step time (the dynamic miner,
    `conan_embed.mining.DynamicHardNegativeMiner`; None = each row's static window). It is also
    registered as a callback and, with anything in `states`, saved in every checkpoint and restored
    on resume (`training.checkpoint.TrainingState`)."""

    def __init__(self, *, tasks: dict[str, TrainingTask], composer: BatchComposer, max_length: dict[str, int],
                 prompts: dict[str, str], checkpoint_info: dict | None = None, negatives=None, states=(),
                 **kwargs):
        self.tasks, self.composer = tasks, composer
        self.max_length = max_length
        self.field_prompts = {field: text_prompt(prompts, field) for field in ("query", "passage")}
        self.checkpoint_info = checkpoint_info or {}
        self.step_records: list[StepRecord] = []
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

    def embed(self, model, texts: list[str], field: str) -> Tensor:
        features = self.model.preprocess(texts, prompt=self.field_prompts.get(field),
                                         max_length=self.max_length[field])
        features = {k: v.to(self.args.device) if isinstance(v, Tensor) else v for k, v in features.items()}
        return model(features)["sentence_embedding"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        plan: StepPlan = inputs["plan"]
        task = self.tasks[plan.task]
        batch = task.texts(plan, self.negatives.lookup(plan.task, plan.rows) if self.negatives is not None else None)
        loss, record = self.task_loss(model, task, batch, plan)
        self.step_records.append(record)
        return (loss, {}) if return_outputs else loss

    def task_loss(self, model, task: TrainingTask, batch: TaskBatch, plan: StepPlan) -> tuple[Tensor, StepRecord]:
        cfg, dims = task.config.loss, self.loss.dims
        n = len(batch.queries)
        if task.kind == "sts":
            # one encoder pass for both sides (same prompt and cap): half the embedding-table gradients
            both = self.embed(model, batch.queries + batch.passages, "query")
            labels = torch.tensor(batch.labels, device=both.device)
            loss = cfg.weight * matryoshka_cosent(both[:n], both[n:], labels, dims, cfg.scale)
            return loss, StepRecord(task.name, plan.rows, batch.ids, loss.detach())
        q = self.embed(model, batch.queries, "query")
        # positives and hard negatives share the passage prompt and cap: one pass, as MNRL does
        flat = [text for row in batch.negatives for text in row] if batch.negatives is not None else []
        docs = self.embed(model, batch.passages + flat, "passage")
        p, negatives = docs[:n], (docs[n:].reshape(n, -1, q.shape[-1]) if flat else None)
        loss, out = matryoshka_info_nce(q, p, negatives, dims, cfg.temperature)
        loss = cfg.weight * loss
        # tensors stay on the device: moving them to the CPU here would make a GPU wait before backward
        return loss, StepRecord(task.name, plan.rows, batch.ids, loss.detach(), out.positive_scores,
                                out.negative_scores, batch.negative_ids)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
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

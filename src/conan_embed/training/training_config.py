"""What a training task, its loss and a stage's composer and optimizer are configured with: the parts
of a recipe (conan_embed.recipe.schema, which loads and checks the whole file) that the trainer reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

TASK_KINDS = ("pairs", "retrieval", "sts")
TEXT_FIELDS = ("query", "passage")


@dataclass
class LossConfig:
    name: str = "infonce"  # a registered loss (conan_embed.losses.LOSSES): infonce, cosent or your own
    temperature: float = 0.05  # InfoNCE; the paper gives none (FlagEmbedding uses 0.02)
    scale: float = 20.0  # CoSENT
    weight: float = 1.0  # multiplies the task's loss
    # pairs / retrieval: other rows' positives and negatives count as negatives too. false: off (for
    # classification as retrieval: a batch holds many texts of the query's own class, which are not
    # negatives). "local": this process's rows; "global": every process's rows (gathered with gradients:
    # N processes train as one with N times the batch); true: global, except with cbb (whose retrieval
    # ranks share their rows: local). One process: local and global are the same.
    in_batch: bool | Literal["local", "global"] = True
    # GradCache: embed the batch this many texts at a time without gradients, then replay each mini-batch
    # with them (training.gradcache): the loss and gradients of the whole batch at one mini-batch's memory,
    # for about a third more compute. None: the whole batch at once.
    mini_batch_size: int | None = None


def in_batch_scope(task: "TaskConfig", composer: str) -> Literal["none", "local", "global"]:
    """Which rows a task's in-batch negatives come from: none, this process's, or every process's."""
    value = task.loss.in_batch
    if value is False or task.kind == "sts":
        return "none"
    if value is True:
        return "local" if composer == "cbb" else "global"
    return value


@dataclass
class NegativesConfig:
    count: int = 7  # hard negatives per query
    skip_top: int = 10  # the paper skips the 10 highest-ranked candidates (likely unlabelled positives)


@dataclass
class TaskConfig:
    kind: Literal["pairs", "retrieval", "sts"]
    file: str  # relative to the recipe's data.dir
    batch_size: int = 32
    corpus: str | None = None  # retrieval records with candidate ids: id -> text file
    max_rows: int | None = None  # train on a fixed random sample of this many rows (None: all)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    max_length: dict[str, int] = field(default_factory=dict)  # overrides the stage's caps for this task's texts


@dataclass
class ComposerConfig:
    """How tasks share steps (docs/cbb.md). `sequential`: tasks take turns, one per step (the paper's
    baseline). `cbb`: cross-GPU batch balance, every step holds every task."""

    name: Literal["sequential", "cbb"] = "sequential"
    # cbb: retrieval ranks (each holds 1/N of every row's hard negatives). With one process they are
    # virtual: the N shares are embedded in that process. With W processes: W - sts_ranks (the default).
    retrieval_ranks: int | None = None
    sts_ranks: int = 1  # cbb: ranks (virtual with one process) that each run one STS batch
    beta: float = 0.8  # cbb: weight of the STS term (paper: 0.8)


@dataclass
class OptimConfig:
    lr: float = 1e-5
    warmup: float = 0.05  # fraction of the stage's steps
    weight_decay: float = 0.001
    max_grad_norm: float = 1.0

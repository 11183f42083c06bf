"""Losses by name: the registry builds the shipped losses with the recipe's settings, takes new ones,
and the trainer builds each task's loss from it by the name its composer gives."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conan_embed.errors import InputError
from conan_embed.losses import LOSSES, CBBLoss, CoSENTLoss, InfoNCELoss, build_loss, register_loss


def test_shipped_losses_are_built_with_the_task_settings():
    settings = SimpleNamespace(temperature=0.02, scale=30.0)
    infonce = build_loss("infonce", settings, in_batch=False)
    assert type(infonce) is InfoNCELoss and infonce.temperature == 0.02 and infonce.in_batch is False
    cosent = build_loss("cosent", settings, in_batch=True)
    assert type(cosent) is CoSENTLoss and cosent.scale == 30.0
    assert type(build_loss("cbb", settings, in_batch=True)) is CBBLoss
    with pytest.raises(InputError, match="unknown loss 'focal'"):
        build_loss("focal", settings, in_batch=True)


def test_a_registered_loss_is_what_the_trainer_builds(monkeypatch):
    from conan_embed.training.composers import CrossGPUBatchBalance, SequentialTasks
    from conan_embed.training.training_config import ComposerConfig, LossConfig, TaskConfig
    from conan_embed.training.trainer import task_loss_module

    class ScaledCosine(torch.nn.Module):  # 1 - mean cos(q, p), times a factor
        def __init__(self, factor):
            super().__init__()
            self.factor = factor

        def forward(self, q, p, negatives=None):
            return self.factor * (1 - F.cosine_similarity(q, p).mean())

    monkeypatch.setitem(LOSSES, "scaled-cosine", lambda settings, in_batch: ScaledCosine(settings.temperature))
    with pytest.raises(ValueError, match="registered already"):
        register_loss("scaled-cosine", LOSSES["scaled-cosine"])

    def task(kind, name):
        config = TaskConfig(kind=kind, file="x.jsonl", loss=LossConfig(name=name, temperature=3.0))
        return SimpleNamespace(kind=kind, config=config, name=kind)

    retrieval, sts = task("retrieval", "infonce"), task("sts", "cosent")
    # the composer names the loss (here: not the task's own), the task gives its settings
    composer = SimpleNamespace(config=ComposerConfig(name="sequential"), loss_name=lambda t: "scaled-cosine")
    module = task_loss_module(retrieval, (4, 8), composer)
    assert type(module.loss) is ScaledCosine and module.loss.factor == 3.0 and tuple(module.dims) == (4, 8)
    # the cbb composer trains retrieval with CBB's term whatever the task names, and STS with its own loss
    cbb, turns = object.__new__(CrossGPUBatchBalance), object.__new__(SequentialTasks)  # loss_name reads no state
    assert cbb.loss_name(retrieval) == "cbb" and cbb.loss_name(sts) == "cosent"
    assert turns.loss_name(retrieval) == "infonce" and turns.loss_name(task("retrieval", "scaled-cosine")) == "scaled-cosine"

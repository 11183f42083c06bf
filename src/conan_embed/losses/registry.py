"""Losses by name: what a recipe task's `loss.name` picks, and what a composer asks for (cross-GPU
batch balance trains its retrieval tasks with "cbb").

    build_loss("infonce", LossSettings(temperature=0.02), in_batch=True)   # an InfoNCELoss
    register_loss("my-loss", lambda settings, in_batch: MyLoss(settings.temperature))

A factory takes the task's loss settings (anything with the recipe's `loss` fields: temperature, scale)
and whether in-batch negatives are on, and returns an `nn.Module` with `forward` and `details` on
embeddings, as the losses in this package have.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from conan_embed.errors import InputError
from conan_embed.losses.cbb import CBBLoss
from conan_embed.losses.cosent import CoSENTLoss
from conan_embed.losses.infonce import InfoNCELoss

LossFactory = Callable[[object, bool], nn.Module]

LOSSES: dict[str, LossFactory] = {
    "infonce": lambda settings, in_batch: InfoNCELoss(settings.temperature, in_batch=in_batch),
    "cosent": lambda settings, in_batch: CoSENTLoss(settings.scale),
    "cbb": lambda settings, in_batch: CBBLoss(settings.temperature, in_batch=in_batch),
}


def register_loss(name: str, factory: LossFactory) -> None:
    """Make `name` a loss a recipe can name."""
    if name in LOSSES:
        raise ValueError(f"a loss named {name!r} is registered already")
    LOSSES[name] = factory


def build_loss(name: str, settings, *, in_batch: bool) -> nn.Module:
    if name not in LOSSES:
        raise InputError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}", field="loss.name")
    return LOSSES[name](settings, in_batch)

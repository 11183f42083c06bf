"""Shared by the losses: argument checks that name the argument, and the logit precision."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from conan_embed.errors import InputError


def positive_finite(value: float, name: str) -> float:
    try:
        ok = math.isfinite(value) and value > 0
    except TypeError:
        ok = False
    if not ok:
        raise InputError(f"{name} must be a finite number > 0, got {value!r}", field=name)
    return float(value)


def embeddings_2d(tensor: Tensor, name: str) -> Tensor:
    if not isinstance(tensor, Tensor) or tensor.ndim != 2 or not tensor.is_floating_point() or len(tensor) == 0:
        got = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
        raise InputError(f"{name} must be a non-empty floating [B, D] tensor, got {got}", field=name)
    return tensor


def same_shape(tensor: Tensor, name: str, reference: Tensor, reference_name: str) -> Tensor:
    if tensor.shape != reference.shape:
        raise InputError(f"{name} must have the shape of {reference_name} {tuple(reference.shape)}, "
                         f"got {tuple(tensor.shape)}", field=name)
    return tensor


def upcast(scores: Tensor) -> Tensor:
    """Half-precision scores in float32: at temperature 0.02 a bf16 logit of 50 keeps ~2 digits."""
    return scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores

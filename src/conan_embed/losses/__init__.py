"""Losses of the Conan-Embedding recipe (arXiv 2408.15710), computed on embeddings.

InfoNCE for retrieval, CoSENT for STS, the cross-GPU batch balance loss (its retrieval term, and the step that adds the STS batches), and a
Matryoshka wrapper that trains several embedding lengths at once. Each has a functional form on
tensors and an `nn.Module` with a `details()` that also returns per-example scores; see docs/losses.md.
`build_loss` makes one by name (the registry a recipe's `loss.name` reads).
"""

from conan_embed.losses.cbb import CBBLoss, CBBOutput, cbb_details, cbb_loss, cbb_step_loss
from conan_embed.losses.cosent import CoSENTLoss, cosent
from conan_embed.losses.infonce import InfoNCELoss, InfoNCEOutput, info_nce, info_nce_details
from conan_embed.losses.matryoshka import LossOutput, MatryoshkaLoss
from conan_embed.losses.registry import LOSSES, build_loss, register_loss

__all__ = ["LOSSES", "CBBLoss", "CBBOutput", "CoSENTLoss", "InfoNCELoss", "InfoNCEOutput", "LossOutput",
           "MatryoshkaLoss", "build_loss", "cbb_details", "cbb_loss", "cbb_step_loss", "cosent", "info_nce",
           "info_nce_details", "register_loss"]

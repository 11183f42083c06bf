"""Losses of the Conan-Embedding recipe (arXiv 2408.15710), computed on embeddings.

InfoNCE for retrieval, CoSENT for STS, and a Matryoshka wrapper that trains several embedding
lengths at once. Each has a functional form on tensors and an `nn.Module`; see docs/losses.md.
"""

from conan_embed.losses.cosent import CoSENTLoss, cosent
from conan_embed.losses.infonce import InfoNCELoss, InfoNCEOutput, info_nce, info_nce_details
from conan_embed.losses.matryoshka import MatryoshkaLoss

__all__ = ["CoSENTLoss", "InfoNCELoss", "InfoNCEOutput", "MatryoshkaLoss", "cosent", "info_nce", "info_nce_details"]

"""The Conan embedder: Transformer -> Pooling -> Dense(hidden -> out_dim), saved as a plain
sentence-transformers folder.

Conan-Embedding (arXiv 2408.15710, §3) puts a linear layer (1024 -> 1792, with bias, no activation)
on BERT-large and trains it with Matryoshka losses at 256, 512, ..., 1792 dims, so one model serves
many vector lengths. `SentenceTransformer(path)` and `SentenceTransformer(path, truncate_dim=256)`
load the result without conan_embed installed; our own settings (Matryoshka dims) sit beside it in
`conan_embed.json`, which plain loading ignores.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

from conan_embed.errors import InputError
from conan_embed.files import write_json

PAPER_OUT_DIM = 1792
PAPER_MATRYOSHKA_DIMS = (256, 512, 768, 1024, 1280, 1536, 1792)
E5_PROMPTS = {"query": "query: ", "document": "passage: "}
CONAN_CONFIG = "conan_embed.json"


def matryoshka_dims(out_dim: int, dims=PAPER_MATRYOSHKA_DIMS) -> tuple[int, ...]:
    """The configured dims that fit in `out_dim`, plus `out_dim` itself, ascending.

    >>> matryoshka_dims(384)
    (256, 384)
    """
    bad = [d for d in dims if not isinstance(d, int) or d <= 0]
    if bad:
        raise InputError(f"Matryoshka dims must be positive integers, got {bad}", field="matryoshka_dims")
    return tuple(sorted({d for d in dims if d <= out_dim} | {out_dim}))


def text_prompt(prompts: dict | None, kind: str) -> str | None:
    """The prompt for one kind of text, the one rule shared by training, serving, the teacher and
    mining: `query` -> the model's "query" prompt; `passage` -> its "document" prompt (the name
    sentence-transformers' `encode_document` and mteb use, so training matches evaluation), else its
    "passage" prompt. None when the model has none.

    >>> text_prompt({"query": "query: ", "document": "passage: ", "passage": "p: "}, "passage")
    'passage: '
    """
    prompts = prompts or {}
    if kind == "query":
        return prompts.get("query")
    if kind == "passage":
        return prompts.get("document", prompts.get("passage"))
    raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}")


def check_truncate_dim(dim, out_dim: int) -> int | None:
    """`dim` if it is a valid Matryoshka truncation of an `out_dim` model (None = no truncation)."""
    if dim is None:
        return None
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise InputError(f"dim must be a positive integer, got {dim!r}", field="dim")
    if dim <= 0 or dim > out_dim:
        raise InputError(f"dim must be between 1 and the model's output size {out_dim}, got {dim}", field="dim")
    return dim


def build_embedder(
    base: str | Path,
    *,
    pooling: Literal["cls", "mean"] = "cls",
    out_dim: int | None = PAPER_OUT_DIM,
    max_seq_length: int | None = 512,
    dims=PAPER_MATRYOSHKA_DIMS,
    prompts: dict[str, str] | None = None,
    device: str | None = None,
    seed: int = 0,
):
    """Build a SentenceTransformer on a Hugging Face encoder folder or hub id.

    `out_dim=None` drops the Dense head (the base model's hidden size is the output). `prompts` maps
    prompt names ("query", "document") to prefixes; e5 models need `E5_PROMPTS`.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

    if pooling not in ("cls", "mean"):
        raise InputError(f"pooling must be 'cls' or 'mean', got {pooling!r}", field="pooling")
    if out_dim is not None and out_dim <= 0:
        raise InputError(f"out_dim must be positive or None, got {out_dim}", field="out_dim")
    if isinstance(base, Path) or Path(str(base)).exists():
        if not (Path(base) / "config.json").is_file():
            raise InputError("not a Hugging Face model folder (no config.json)", path=base)
    transformer = Transformer(str(base), max_seq_length=max_seq_length)
    hidden = transformer.get_embedding_dimension()
    modules = [transformer, Pooling(hidden, pooling_mode=pooling)]
    if out_dim is not None:
        # seeded so that building the same recipe twice gives the same untrained head
        generator = torch.Generator().manual_seed(seed)
        dense = Dense(hidden, out_dim, bias=True, activation_function=None)
        with torch.no_grad():
            bound = 1.0 / hidden**0.5
            dense.linear.weight.uniform_(-bound, bound, generator=generator)
            dense.linear.bias.uniform_(-bound, bound, generator=generator)
        modules.append(dense)
    model = SentenceTransformer(modules=modules, device=device, prompts=prompts or {},
                                similarity_fn_name="cosine")
    model.conan_matryoshka_dims = matryoshka_dims(out_dim or hidden, dims)
    return model


@contextlib.contextmanager
def own_storage(model):
    """Parameters that are views into a larger buffer (DeepSpeed's flat groups) get a copy of their own
    while the block runs: safetensors refuses to save a tensor that does not cover its whole storage.
    The originals are put back after, so the optimizer keeps training the same tensors."""
    swapped = []
    for p in model.parameters():
        if p.data.untyped_storage().nbytes() != p.data.numel() * p.data.element_size():
            swapped.append((p, p.data))
            p.data = p.data.clone()
    try:
        yield model
    finally:
        for p, data in swapped:
            p.data = data


def save_embedder(model, path: str | Path) -> Path:
    """Save as a classic sentence-transformers folder that older stacks and servers load too
    (conan_embed.portable), plus conan_embed.json (Matryoshka dims)."""
    from conan_embed.portable import effective_max_seq_length, make_portable

    path = Path(path)
    with own_storage(model):
        model.save(str(path))
    make_portable(path, max_seq_length=effective_max_seq_length(model))
    dims = getattr(model, "conan_matryoshka_dims", None) or (model.get_embedding_dimension(),)
    write_json(path / CONAN_CONFIG, {"matryoshka_dims": list(dims)})
    return path

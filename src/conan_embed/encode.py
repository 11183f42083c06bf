"""Encode a file of texts into a .npy matrix, without a server."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conan_embed.data.records import read_records
from conan_embed.errors import InputError
from conan_embed.modeling import check_truncate_dim


def read_texts(path: str | Path, field: str = "text") -> list[str]:
    """Texts from a .txt file (one per line) or a JSONL / Parquet file (the `field` of each row)."""
    path = Path(path)
    if path.suffix == ".txt":
        if not path.is_file():
            raise InputError("file not found", path=path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise InputError(f"not UTF-8 ({exc.reason} at byte {exc.start})", path=path) from exc
        texts = [line for line in lines if line.strip()]
    else:
        texts = []
        for i, row in enumerate(read_records(path), 1):
            value = row.get(field) if isinstance(row, dict) else None
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"field '{field}' must be a non-empty string", path=path, row=i, field=field)
            texts.append(value)
    if not texts:
        raise InputError("no texts to encode", path=path)
    return texts


def encode_texts(model, texts: list[str], *, dim: int | None = None, prompt_name: str | None = None,
                 batch_size: int = 32, show_progress: bool = True) -> np.ndarray:
    """L2-normalised float32 embeddings, truncated to `dim` first (Matryoshka) if given."""
    dim = check_truncate_dim(dim, model.get_embedding_dimension())
    if prompt_name is not None and prompt_name not in model.prompts:
        raise InputError(f"the model has no prompt {prompt_name!r}; it has {sorted(model.prompts) or 'none'}",
                         field="prompt")
    emb = model.encode(texts, prompt_name=prompt_name, batch_size=batch_size, truncate_dim=dim,
                       normalize_embeddings=True, show_progress_bar=show_progress, convert_to_numpy=True)
    return emb.astype(np.float32, copy=False)


def encode_file(model, input_path: str | Path, output_path: str | Path, *, field: str = "text",
                **kwargs) -> tuple[int, int]:
    """Encode `input_path` into `output_path` (.npy); returns the matrix shape.

    `model` is a SentenceTransformer or anything `load_embedder` takes; it is loaded only after
    the input has been read, so bad input fails fast.
    """
    output_path = Path(output_path)
    if output_path.suffix != ".npy":
        raise InputError("output must be a .npy file", path=output_path)
    texts = read_texts(input_path, field)
    if isinstance(model, (str, Path)):
        from conan_embed.modeling import load_embedder

        model = load_embedder(model)
    emb = encode_texts(model, texts, **kwargs)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(output_path, emb)
    return emb.shape

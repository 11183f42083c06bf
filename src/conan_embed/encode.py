"""Encode a file of texts into a .npy matrix, without a server.

Large files stream: the input is checked in a first pass (a bad row fails before the model loads),
then encoded chunk by chunk into a memory-mapped .npy written under a temporary name, with a progress
bar over all texts; memory stays at one chunk of texts and embeddings.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from conan_embed.data.records import read_records
from conan_embed.errors import InputError
from conan_embed.modeling import check_truncate_dim


def iter_texts(path: str | Path, field: str = "text") -> Iterator[str]:
    """Texts from a .txt file (one per non-empty line) or a JSONL / Parquet file (the `field` of each
    row), validated as they are read."""
    path = Path(path)
    if path.suffix == ".txt":
        if not path.is_file():
            raise InputError("file not found", path=path)
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    raise InputError(f"not UTF-8 ({exc.reason} at byte {exc.start})", path=path, row=number) from exc
                if line.strip():
                    yield line
        return
    for i, row in enumerate(read_records(path), 1):
        value = row.get(field) if isinstance(row, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"field '{field}' must be a non-empty string", path=path, row=i, field=field)
        yield value


def encode_texts(model, texts: list[str], *, dim: int | None = None, prompt_name: str | None = None,
                 prompt: str | None = None, max_length: int | None = None, precision: str = "fp32",
                 batch_size: int = 32, show_progress: bool = True) -> np.ndarray:
    """L2-normalised float32 embeddings, truncated to `dim` first (Matryoshka) if given.

    `prompt_name` names one of the model's prompts, `prompt` gives the text itself; `max_length` caps
    tokens per text for this call only; `precision` "bf16" encodes under autocast."""
    import torch

    dim = check_truncate_dim(dim, model.get_embedding_dimension())
    if prompt_name is not None and prompt_name not in model.prompts:
        raise InputError(f"the model has no prompt {prompt_name!r}; it has {sorted(model.prompts) or 'none'}",
                         field="prompt")
    saved = model.max_seq_length
    if max_length:
        model.max_seq_length = min(max_length, saved) if saved else max_length
    autocast = (torch.autocast(device_type=model.device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    try:
        with autocast:
            emb = model.encode(texts, prompt_name=prompt_name, prompt=prompt, batch_size=batch_size,
                               truncate_dim=dim, normalize_embeddings=True, show_progress_bar=show_progress,
                               convert_to_numpy=True)
    finally:
        model.max_seq_length = saved
    return np.asarray(emb, dtype=np.float32)


def encode_file(model, input_path: str | Path, output_path: str | Path, *, field: str = "text",
                dim: int | None = None, prompt_name: str | None = None, batch_size: int = 32,
                chunk_size: int = 8192, show_progress: bool = True) -> tuple[int, int]:
    """Encode `input_path` into `output_path` (.npy); returns the matrix shape.

    `model` is a SentenceTransformer or anything `load_embedder` takes; it is loaded only after
    the input has been checked, so bad input fails fast.
    """
    from tqdm.auto import tqdm

    output_path = Path(output_path)
    if output_path.suffix != ".npy":
        raise InputError("output must be a .npy file", path=output_path)
    count = sum(1 for _ in iter_texts(input_path, field))
    if not count:
        raise InputError("no texts to encode", path=input_path)
    if isinstance(model, (str, Path)):
        from conan_embed.model_loading import load_embedder

        model = load_embedder(model)
    width = check_truncate_dim(dim, model.get_embedding_dimension()) or model.get_embedding_dimension()
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(f".{output_path.name}.tmp-{os.getpid()}.npy")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(count, width))
        texts = iter_texts(input_path, field)
        done = 0
        with tqdm(total=count, desc="encode", unit="text", disable=not show_progress) as bar:
            while chunk := list(itertools.islice(texts, chunk_size)):
                out[done:done + len(chunk)] = encode_texts(model, chunk, dim=dim, prompt_name=prompt_name,
                                                          batch_size=batch_size, show_progress=False)
                done += len(chunk)
                bar.update(len(chunk))
        out.flush()
        del out
        os.replace(tmp, output_path)
    finally:
        tmp.unlink(missing_ok=True)
    return count, width

"""From a model reference to a loaded embedder, in one place.

A reference is a shipped model name ('e5-small', prepared into the cache on first use), a model folder
(ours or any sentence-transformers folder) or a hub id (for users with hub access). `resolve_model`
turns it into a `ModelSource` once, at the entry point (the CLI command, `mine`, a stage's start, the
suite); everything below takes the source and neither resolves nor fingerprints again.

    source = resolve_model("e5-small")          # ModelSource(location=PosixPath('~/.cache/.../e5-small'))
    model = load_embedder(source, truncate_dim=256)
    source.fingerprint                           # sha256 over the folder's model files (computed once)

Layering (docs/architecture.md): this module sits above `modeling` (build, save), `assets` (the
shipped models) and `onnx_runtime`; the suite, mining, training and the CLI sit above it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from conan_embed.assets import MODELS, prepare_model
from conan_embed.errors import InputError
from conan_embed.files import content_digest
from conan_embed.modeling import CONAN_CONFIG

# a checkpoint folder's training state: not part of what the model computes
_NOT_MODEL = {"README.md", "optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin",
              "conan_checkpoint.json", "dhnm_state.npz", "rng_state.pth"}


def model_fingerprint(path: str | Path) -> str:
    """sha256 over a model folder's files (not a checkpoint's optimizer state); a hub id: over its name."""
    path = Path(path)
    if not path.is_dir():
        return hashlib.sha256(str(path).encode()).hexdigest()
    return content_digest(path, skip=lambda name: name in _NOT_MODEL or name.startswith("rng_state"))


@dataclass(frozen=True)
class ModelSource:
    """What a model reference names: a local folder (a Path) or a hub id (a str)."""

    location: Path | str

    @property
    def is_local(self) -> bool:
        return isinstance(self.location, Path)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the model's files (a hub id: over its name): what a cache keyed on the model uses."""
        return model_fingerprint(self.location)

    def __str__(self) -> str:
        return str(self.location)


def resolve_model(reference: str | os.PathLike | ModelSource) -> ModelSource:
    """A shipped model name -> its prepared folder; a model folder -> itself (checked to be one); a
    path-like string that does not exist is an InputError; anything else is taken as a hub id."""
    if isinstance(reference, ModelSource):
        return reference
    text = str(reference)
    if text in MODELS:
        return ModelSource(prepare_model(text))
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir() or not ((path / "modules.json").is_file() or (path / "config.json").is_file()):
            raise InputError("not a model folder (no modules.json or config.json)", path=path)
        return ModelSource(path)
    if text.startswith((".", "/", "~")) or os.sep in text and text.count("/") != 1:
        raise InputError("model folder does not exist", path=path)
    return ModelSource(text)


def load_embedder(model: str | os.PathLike | ModelSource, *, truncate_dim: int | None = None,
                  device: str | None = None, backend: str = "torch", onnx_file: str | None = None,
                  padding_free: bool = True):
    """Load a model (any reference `resolve_model` takes) as a SentenceTransformer.

    backend="onnx" runs the folder's ONNX export (`onnx_file`, default onnx/model.onnx; written by
    `conan-embed export`) in place of the PyTorch transformer (conan_embed.onnx_runtime).

    padding_free: text batches run packed where the architecture allows it (conan_embed.padding_free;
    the same embeddings, less work); False keeps padded batches (the server pads to its own buckets)."""
    from sentence_transformers import SentenceTransformer

    if backend not in ("torch", "onnx"):
        raise InputError(f"backend must be torch or onnx, got {backend!r}", field="backend")
    source = resolve_model(model)
    model = SentenceTransformer(str(source.location), truncate_dim=truncate_dim, device=device)
    if backend == "onnx":
        from conan_embed.onnx_runtime import use_onnx

        if not source.is_local:
            raise InputError("the onnx backend needs a local model folder", path=source.location, field="backend")
        use_onnx(model, source.location, onnx_file)
    elif padding_free:
        from conan_embed.padding_free import enable_padding_free

        enable_padding_free(model)
    conf = Path(source.location) / CONAN_CONFIG
    dims = json.loads(conf.read_text())["matryoshka_dims"] if conf.is_file() else [model.get_embedding_dimension()]
    model.conan_matryoshka_dims = tuple(dims)
    return model

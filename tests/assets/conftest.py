"""A small synthetic E5S1 model + unigram tokenizer, with Q4_0 weights that round-trip exactly."""

import json

import numpy as np
import pytest

from conan_embed.assets.e5s1 import QK, E5S1Header, E5S1Model, expected_shape, tensor_names

PIECES = ["<s>", "<pad>", "</s>", "<unk>", "\u2581", "保", "险", "保险", "人", "寿", "人寿", "。",
          "1", "2", "9", "19", "a", "b", "ab", "\u2581ab", "q", "u", "e", "r", "y", ":", "\u2581query",
          "p", "s", "g", "\u2581passage", "\u043c", "<mask>"]


def exact_q4_values(rng, count):
    """Weights that Q4_0 stores exactly: per block an fp16 scale and nibbles with one 0 (= -8 d)."""
    q = rng.integers(0, 16, size=(count // QK, QK))
    q[np.arange(len(q)), rng.integers(0, QK, size=len(q))] = 0
    d = rng.uniform(0.01, 0.1, size=(len(q), 1)).astype(np.float16).astype(np.float32)
    return ((q - 8) * d).astype(np.float32)


def synthetic_model(seed=0, hidden=32, layers=2, heads=2, ffn=64, extra_rows=3):
    rng = np.random.default_rng(seed)
    h = E5S1Header(hidden, layers, heads, ffn, len(PIECES) + extra_rows, 16, 2, float(np.float32(1e-12)))
    model = E5S1Model(h, list(PIECES), -np.arange(len(PIECES), dtype=np.float32) / 4,
                      {"bos": 0, "eos": 2, "pad": 1, "unk": 3})
    for name in tensor_names(layers):
        shape = expected_shape(h, name)
        n = int(np.prod(shape))
        if name == "emb.word" or (name.endswith(".w") and len(shape) == 2):
            model.tensors[name] = exact_q4_values(rng, n).reshape(shape)
        elif name.endswith("ln.w") or name.endswith("aln.w") or name.endswith("oln.w"):
            model.tensors[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            model.tensors[name] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
    return model


def synthetic_tokenizer_json(model):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = [(p, 0.0 if p.startswith("<") and p.endswith(">") else float(s))
             for p, s in zip(model.pieces, model.scores)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    return json.loads(tok.to_str())


@pytest.fixture
def synthetic():
    """(model, tokenizer.json dict) of a small synthetic e5-like model."""
    model = synthetic_model()
    return model, synthetic_tokenizer_json(model)

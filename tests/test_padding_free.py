"""The padding-free forward: packed texts give the padded batch's embeddings and gradients, attention
never crosses texts, RoBERTa-style positions are kept, and models that cannot pack are left padded."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from conan_embed.padding_free import (enable_padding_free, grouped_attention, is_padding_free,
                                      unsupported_reason)

TEXTS = ["短", "保险", "人寿保险可以覆盖什么", "汽车保险的理赔需要多久？" * 3, "房屋", "残疾年金如何计算",
         "健康保险是否覆盖牙科费用，以及需要什么条件才能申请理赔" * 2, "退休", "好"] * 3


def _no_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model[0].auto_model.config.attention_probs_dropout_prob = 0.0
    return model


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    from conan_embed.testing import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("pf") / "bert", TEXTS + ["query: passage: "], hidden=32, layers=2,
                     heads=4, max_positions=128)


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory, bert_dir):
    """A RoBERTa-family encoder (XLM-R: positions start at padding_idx + 1), with the tiny BERT's tokenizer."""
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    path = tmp_path_factory.mktemp("pf") / "xlmr"
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id)
    XLMRobertaModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _pair(path, pooling="mean"):
    from conan_embed.modeling import build_embedder

    padded = _no_dropout(build_embedder(path, pooling=pooling, out_dim=24, max_seq_length=128, dims=(24,),
                                        prompts={"query": "query: ", "document": "passage: "}))
    packed = copy.deepcopy(padded)
    assert enable_padding_free(packed) and is_padding_free(packed) and not is_padding_free(padded)
    return padded, packed


def _forward_and_grads(model, texts):
    model.train()
    model.zero_grad(set_to_none=True)
    features = model.preprocess(texts, prompt="passage: ", max_length=40)
    emb = model(features)["sentence_embedding"]
    weights = torch.linspace(-1.0, 1.0, emb.numel()).reshape(emb.shape)  # a loss that reaches every row
    (emb * weights).sum().backward()
    return features, emb.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch,pooling", [("bert", "mean"), ("bert", "cls"), ("xlmr", "mean")])
def test_packed_equals_padded_embeddings_and_gradients(arch, pooling, bert_dir, xlmr_dir):
    padded, packed = _pair(bert_dir if arch == "bert" else xlmr_dir, pooling)
    f_pad, e_pad, g_pad = _forward_and_grads(padded, TEXTS)
    f_pack, e_pack, g_pack = _forward_and_grads(packed, TEXTS)
    assert f_pad["input_ids"].dim() == 2 and "cu_seq_lens_q" not in f_pad
    assert f_pack["input_ids"].shape[0] == 1 and "cu_seq_lens_q" in f_pack
    real = int(f_pad["attention_mask"].sum())
    assert f_pack["input_ids"].shape[1] == real < f_pad["attention_mask"].numel()  # no padding token is run
    # fp32: the packed forward sums the same products in another order (other matrix shapes), so they agree
    # to rounding, ~1e-7 relative
    torch.testing.assert_close(e_pack, e_pad, rtol=1e-5, atol=1e-6)
    assert g_pack.keys() == g_pad.keys()
    # gradients: compared against the largest gradient, not each tensor's own: the key biases' true
    # gradient is 0 (softmax ignores a shift shared by a row), so what they hold is rounding noise
    scale = max(g.abs().max().item() for g in g_pad.values())
    for name, grad in g_pad.items():
        torch.testing.assert_close(g_pack[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_grouped_attention_keeps_texts_apart():
    """Against attention computed text by text with an explicit softmax."""
    g = torch.Generator().manual_seed(0)
    lengths = [3, 1, 7, 7, 2, 5, 9, 4]
    total, heads, dim = sum(lengths), 2, 4
    q, k, v = (torch.randn(total, heads, dim, generator=g, dtype=torch.float64) for _ in range(3))
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    out = grouped_attention(q, k, v, cu, scaling=0.5, group=3)
    for i in range(len(lengths)):
        s, e = int(cu[i]), int(cu[i + 1])
        for h in range(heads):
            weights = torch.softmax(0.5 * q[s:e, h] @ k[s:e, h].T, dim=-1)
            torch.testing.assert_close(out[s:e, h], weights @ v[s:e, h])


def test_encode_and_load_embedder_pack_by_default(bert_dir, tmp_path):
    from conan_embed.model_loading import load_embedder
    from conan_embed.modeling import build_embedder, save_embedder

    folder = save_embedder(build_embedder(bert_dir, pooling="mean", out_dim=None, max_seq_length=128,
                                          prompts={"query": "query: "}), tmp_path / "model")
    packed, padded = load_embedder(folder), load_embedder(folder, padding_free=False)
    assert is_padding_free(packed) and not is_padding_free(padded)
    a = padded.encode(TEXTS, batch_size=5, convert_to_tensor=True)
    b = packed.encode(TEXTS, batch_size=5, convert_to_tensor=True)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    # the saved folder does not carry the attention switch: any stack loads it as before
    packed.save(str(tmp_path / "again"))
    assert "conan_varlen" not in (tmp_path / "again" / "config.json").read_text()


def test_padded_batches_still_work_on_an_enabled_model(bert_dir):
    """The server pads to its own buckets: padded input through the packed attention falls back to SDPA."""
    padded, packed = _pair(bert_dir)
    packed[0].can_flatten_inputs = False
    padded.eval(), packed.eval()
    with torch.no_grad():
        f = padded.preprocess(TEXTS, prompt="query: ")
        torch.testing.assert_close(packed(dict(f))["sentence_embedding"], padded(dict(f))["sentence_embedding"])


def test_a_model_that_cannot_pack_is_left_padded(bert_dir):
    from conan_embed.modeling import build_embedder

    model = build_embedder(bert_dir, pooling="mean", out_dim=None, max_seq_length=128)
    model[0].auto_model._supports_attention_backend = False
    assert "attention interface" in unsupported_reason(model)
    assert enable_padding_free(model) is False and not is_padding_free(model)
    assert model[0].auto_model.config._attn_implementation != "conan_varlen"
    emb = model.encode(TEXTS[:4])
    assert emb.shape == (4, 32) and all(math.isfinite(x) for x in emb.ravel())

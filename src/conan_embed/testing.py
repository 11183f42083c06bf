"""Tiny random-init models for tests and demos: built from a config, no download.

`tiny_bert(path)` writes a Hugging Face BERT folder with a character-level WordPiece tokenizer that
covers the given texts (Chinese characters tokenize one piece each, as in bert-base-chinese).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_DEFAULT_TEXT = "保险人寿汽车健康房屋残疾年金退休理赔费用公司政策覆盖需要可以什么如何是否好差书质量价格快递"


def char_vocab(texts: Iterable[str]) -> list[str]:
    """Special tokens, printable ASCII, then every other character of `texts` in first-seen order."""
    seen = dict.fromkeys(SPECIAL_TOKENS)
    seen.update(dict.fromkeys(chr(c) for c in range(33, 127)))
    seen.update(dict.fromkeys("##" + chr(c) for c in range(33, 127) if chr(c).isalnum()))
    for text in texts:
        seen.update(dict.fromkeys(ch for ch in text if not ch.isspace()))
    return list(seen)


def tiny_bert(path: str | Path, texts: Iterable[str] = (_DEFAULT_TEXT,), *, hidden: int = 32,
              layers: int = 2, heads: int = 2, intermediate: int = 64, max_positions: int = 128,
              seed: int = 0) -> Path:
    """Write a random-init BertModel + fast tokenizer to `path` and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    path = Path(path)
    vocab = {tok: i for i, tok in enumerate(char_vocab(texts))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=False, lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_positions,
    )
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate,
                        max_position_embeddings=max_positions)
    BertModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path

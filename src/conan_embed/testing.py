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
              seed: int = 0, dropout: float = 0.1) -> Path:
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
                        max_position_embeddings=max_positions, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    BertModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def tiny_training_data(folder: str | Path, *, questions: int = 48, candidates: int = 24) -> dict[str, int]:
    """Write a small, real-text training data folder shaped like `conan-embed build-data`'s output:
    pretrain/weak_pairs.jsonl, finetune/{retrieval,corpus,sts}.jsonl from the first insuranceqa
    training questions. Returns the row count per file."""
    from conan_embed.data.records import write_records
    from conan_embed.data.sources import insuranceqa_answers, insuranceqa_questions

    folder = Path(folder)
    answers = insuranceqa_answers()
    qs = insuranceqa_questions("train")[:questions]
    corpus_ids = sorted({n for q in qs for n in q.negatives[:candidates]} | {a for q in qs for a in q.answers})
    counts = {
        "pretrain/weak_pairs.jsonl": write_records(folder / "pretrain/weak_pairs.jsonl", (
            {"id": f"w{i}", "query": q.text, "passage": answers[q.answers[0]]} for i, q in enumerate(qs)), "weak_pair"),
        "finetune/retrieval.jsonl": write_records(folder / "finetune/retrieval.jsonl", (
            {"id": f"r{i}", "query": q.text, "positives": [answers[a] for a in q.answers],
             "positive_ids": list(q.answers), "candidates": list(q.negatives[:candidates])}
            for i, q in enumerate(qs)), "retrieval"),
        "finetune/corpus.jsonl": write_records(folder / "finetune/corpus.jsonl", (
            {"id": i, "text": answers[i]} for i in corpus_ids), "corpus"),
        "finetune/sts.jsonl": write_records(folder / "finetune/sts.jsonl", (
            {"text1": qs[i].text, "text2": qs[(i * 7 + 1) % len(qs)].text, "score": float(i % 5)}
            for i in range(len(qs))), "sts"),
    }
    return counts


def synthetic_training_data(folder: str | Path, *, rows: int = 512, corpus: int = 4096, candidates: int = 40,
                            seed: int = 0) -> list[str]:
    """Write a training data folder shaped like `build-data`'s finetune/ and pretrain/ files from random
    Chinese text (no package data needed: for machines that carry only the code, such as a GPU box).
    Queries are 8-40 characters, passages 40-300 (about the shipped data's token lengths); candidate
    lists are random corpus ids. Returns every text written (for a character vocabulary)."""
    import random

    from conan_embed.data.records import write_records

    folder, rng = Path(folder), random.Random(seed)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)] + list("，。？！")

    def text(low: int, high: int) -> str:
        return "".join(rng.choices(chars, k=rng.randint(low, high)))

    docs = [text(40, 300) for _ in range(corpus)]
    queries = [text(8, 40) for _ in range(rows)]
    positives = rng.sample(range(corpus), rows)
    write_records(folder / "finetune/corpus.jsonl", ({"id": i, "text": t} for i, t in enumerate(docs)), "corpus")
    write_records(folder / "finetune/retrieval.jsonl", (
        {"id": f"s{i}", "query": q, "positives": [docs[p]], "positive_ids": [p],
         "candidates": [c for c in rng.sample(range(corpus), candidates + 1) if c != p][:candidates]}
        for i, (q, p) in enumerate(zip(queries, positives))), "retrieval")
    write_records(folder / "finetune/sts.jsonl", (
        {"text1": queries[i], "text2": queries[(i * 7 + 1) % rows], "score": float(i % 5)} for i in range(rows)), "sts")
    write_records(folder / "pretrain/weak_pairs.jsonl", (
        {"id": f"w{i}", "query": q, "passage": docs[p]} for i, (q, p) in enumerate(zip(queries, positives))),
        "weak_pair")
    return queries + docs


def tiny_recipe(output_dir: str | Path, data_dir: str | Path, model_dir: str | Path, **stage_overrides) -> dict:
    """A two-stage recipe (as a dict) over `tiny_training_data` and a `tiny_bert` model, seconds to run."""
    common = {"optim": {"lr": 1e-3, "warmup": 0.1}, "precision": "fp32", "checkpoint": {"every": 3, "keep": 5},
              "log": {"every": 1, "tensorboard": False}, **stage_overrides}
    return {
        "name": "tiny",
        "seed": 7,
        "output_dir": str(output_dir),
        "data": {"dir": str(data_dir), "build": False},
        "model": {"base": str(model_dir), "pooling": "mean", "out_dim": 48, "matryoshka_dims": [16, 32],
                  "max_length": {"query": 24, "passage": 48}, "prompts": {"query": "query: ", "document": "passage: "}},
        "stages": {
            "pretrain": {"max_steps": 5, "tasks": {"weak": {"kind": "pairs", "file": "pretrain/weak_pairs.jsonl",
                                                            "batch_size": 8}}, **common},
            "finetune": {"init": "pretrain", "max_steps": 8, "tasks": {
                "retrieval": {"kind": "retrieval", "file": "finetune/retrieval.jsonl", "corpus": "finetune/corpus.jsonl",
                              "batch_size": 4, "negatives": {"count": 2, "skip_top": 3}},
                "sts": {"kind": "sts", "file": "finetune/sts.jsonl", "batch_size": 8, "loss": {"name": "cosent"}},
            }, **common},
        },
        "eval": {"size": "tiny", "dims": [None, 16]},
    }


def crash_after_step(step: int):
    """A Trainer callback that raises RuntimeError("simulated crash") at the end of `step` (after the
    optimizer step, before that step's checkpoint): for testing resume."""
    from transformers import TrainerCallback

    class CrashAfterStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise RuntimeError("simulated crash")

    return CrashAfterStep()

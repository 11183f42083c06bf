"""Fixtures of the mining tests: a tiny model folder for `mine`, and its input files."""

from __future__ import annotations

import pytest

from conan_embed.data.records import read_records, write_records


@pytest.fixture(scope="session")
def st_model(train_bert, tmp_path_factory):
    """The tiny BERT as a sentence-transformers folder with e5-style prompts."""
    from conan_embed.modeling import E5_PROMPTS, build_embedder, save_embedder

    model = build_embedder(train_bert, pooling="mean", out_dim=None, max_seq_length=64, dims=(), prompts=E5_PROMPTS)
    return save_embedder(model, tmp_path_factory.mktemp("mine-model") / "model")


@pytest.fixture
def files(train_data, tmp_path):
    """Rows without candidates (what `mine` fills in), a corpus holding a copy of row 0's positive under
    another id, and every row's positives."""
    corpus = list(read_records(train_data / "finetune/corpus.jsonl"))
    rows = [{k: v for k, v in r.items() if k != "candidates"} for r in read_records(train_data / "finetune/retrieval.jsonl")]
    corpus.append({"id": "twin", "text": rows[0]["positives"][0]})
    write_records(tmp_path / "corpus.jsonl", corpus)
    write_records(tmp_path / "queries.jsonl", rows)
    return tmp_path / "queries.jsonl", tmp_path / "corpus.jsonl", rows, corpus

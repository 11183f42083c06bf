"""Session fixtures shared by the training and mining tests: a small real-text training data folder, a tiny
random BERT that covers its characters, and a two-stage tiny recipe over them."""

import os

import pytest

# Tests never touch a model or dataset hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def train_data(tmp_path_factory):
    from conan_embed.testing import tiny_training_data

    folder = tmp_path_factory.mktemp("train-data")
    tiny_training_data(folder)
    return folder


@pytest.fixture(scope="session")
def train_bert(train_data, tmp_path_factory):
    from conan_embed.data.records import read_records
    from conan_embed.testing import tiny_bert

    texts = ["query: passage: "]
    texts += [r["query"] for r in read_records(train_data / "finetune/retrieval.jsonl")]
    texts += [r["text"] for r in read_records(train_data / "finetune/corpus.jsonl")]
    return tiny_bert(tmp_path_factory.mktemp("train-bert") / "bert", texts, hidden=32, layers=2, max_positions=128)


@pytest.fixture
def recipe_dict(tmp_path, train_data, train_bert):
    """A fresh two-stage tiny recipe (dict) writing into tmp_path/run."""
    from conan_embed.testing import tiny_recipe

    return tiny_recipe(tmp_path / "run", train_data, train_bert)

"""Small Chinese pair files and a tiny random teacher for the curation tests."""

from __future__ import annotations

import json

import pytest


def write_jsonl(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")


def read_rows(folder, pattern="*.jsonl") -> list[dict]:
    rows = []
    for path in sorted(folder.glob(pattern)):
        with open(path, encoding="utf-8") as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


@pytest.fixture(scope="session")
def shipped_pairs():
    """The first 400 shipped weak pairs (insuranceqa questions and answers, People's Daily)."""
    from conan_embed.data.builders import build_weak_pairs

    pairs = build_weak_pairs()
    step = max(len(pairs) // 400, 1)
    return [{**p, "id": f"w{i}"} for i, p in enumerate(pairs[::step][:400])]


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, shipped_pairs):
    from conan_embed.testing import tiny_bert

    texts = [p["query"] + p["passage"] for p in shipped_pairs] + ["query: passage: 今天天气很好我们去公园散步"]
    return str(tiny_bert(tmp_path_factory.mktemp("teacher") / "bert", texts, hidden=32, layers=1, max_positions=96))

"""A tiny random e5-style model (prompts "query: " / "passage: ") over the `tiny` suite's texts, and
one shared run of the whole tiny suite, with every text the model receives recorded."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def nospace(text: str) -> str:
    return "".join(text.split())


class Recorder:
    """Wraps `model.preprocess` and keeps the decoded text of every input the model encodes."""

    def __init__(self, model):
        self.texts: list[str] = []
        self._orig = model.preprocess
        self.model = model
        model.preprocess = self

    def __call__(self, inputs, prompt=None, **kwargs):
        out = self._orig(inputs, prompt=prompt, **kwargs)
        if "input_ids" in out and len(inputs) > 0:
            rows = out["input_ids"]
            if "cu_seq_lens_q" in out:  # packed (padding-free): one row of every text, cut at the boundaries
                cu = out["cu_seq_lens_q"].tolist()
                rows = [rows[0, a:b] for a, b in zip(cu, cu[1:])]
            decoded = self.model.tokenizer.batch_decode(rows, skip_special_tokens=True)
            self.texts.extend(nospace(t) for t in decoded)
        return out

    def seen(self, prefix: str, text: str, n: int = 30) -> bool:
        want = prefix + nospace(text)[:n]
        return any(t.startswith(want) for t in self.texts)


@pytest.fixture(scope="session")
def recorder_cls():
    return Recorder


@pytest.fixture(scope="session")
def tiny_data():
    from conan_embed.evaluation.data import build_suite_data
    from conan_embed.evaluation.sizes import SIZES

    return build_suite_data(SIZES["tiny"])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_data):
    from conan_embed.modeling import E5_PROMPTS, build_embedder, save_embedder
    from conan_embed.testing import tiny_bert

    d = tiny_data
    texts = [*d.retrieval.queries.values(), *d.retrieval.corpus.values(), *d.reranking.queries.values(),
             *d.reranking.corpus.values(), *d.clustering.texts,
             *(t for p in d.sts.pairs + d.pair_classification.pairs for t in (p.text1, p.text2)),
             *(t for t, _ in d.classification.test + d.classification.train)]
    root = tmp_path_factory.mktemp("eval")
    bert = tiny_bert(root / "bert", texts, max_positions=128)
    model = build_embedder(bert, pooling="mean", out_dim=48, max_seq_length=128, prompts=E5_PROMPTS)
    return save_embedder(model, root / "model")


@pytest.fixture(scope="session")
def suite_run(tiny_model_dir, tmp_path_factory):
    """(result, output dir, recorder): the whole tiny suite, run once on the e5-style tiny model."""
    from conan_embed.evaluation import run_suite
    from conan_embed.model_loading import load_embedder

    model = load_embedder(tiny_model_dir)
    recorder = Recorder(model)
    out = tmp_path_factory.mktemp("suite-out")
    result = run_suite(model, size="tiny", output_dir=out, show_progress=False)
    return result, out, recorder

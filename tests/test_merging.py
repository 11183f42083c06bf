"""conan-embed merge: weighted parameter averages of same-architecture models (LM-Cocktail)."""

import json

import pytest
import torch

from conan_embed.errors import InputError
from conan_embed.merging import check_weights, merge_models, weights_from_losses
from conan_embed.modeling import build_embedder, save_embedder
from conan_embed.testing import tiny_bert

TEXTS = ["汽车保险怎么理赔", "人寿保险的现金价值", "今天天气很好"]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    paths = []
    for seed in (0, 1):
        bert = tiny_bert(root / f"bert{seed}", TEXTS, seed=seed)
        model = build_embedder(bert, pooling="mean", out_dim=16, dims=(8, 16), seed=seed,
                               prompts={"query": "问：", "passage": ""})
        paths.append(save_embedder(model, root / f"model{seed}"))
    return paths


def _state(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu").state_dict()


@pytest.mark.parametrize("weights", [(1, 0), (0, 1), (0.5, 0.5)])
def test_merge_is_the_weighted_average_and_loads_in_plain_sentence_transformers(two_models, tmp_path, weights):
    out = tmp_path / "merged"
    info = merge_models(two_models, out, weights=list(weights))
    a, b, merged = _state(two_models[0]), _state(two_models[1]), _state(out)  # plain SentenceTransformer(path)
    assert merged.keys() == a.keys()
    for key, value in merged.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, weights[0] * a[key] + weights[1] * b[key], rtol=1e-6, atol=1e-6)
    assert info["weights"] == dict(zip(map(str, two_models), map(float, weights)))
    assert json.loads((out / "merge.json").read_text())["weights"] == info["weights"]
    assert json.loads((out / "conan_embed.json").read_text()) == {"matryoshka_dims": [8, 16]}


def test_mismatched_architectures_name_both_models(two_models, tmp_path):
    other = build_embedder(tiny_bert(tmp_path / "wide", TEXTS, hidden=48, intermediate=96), pooling="mean",
                           out_dim=16)
    wide = save_embedder(other, tmp_path / "wide-model")
    with pytest.raises(InputError, match=rf"cannot merge {two_models[0]} and {wide}: different architectures "
                                         r"\(hidden_size 32 vs 48\)"):
        merge_models([two_models[0], wide], tmp_path / "out", weights=[0.5, 0.5])


def test_few_shot_weights_prefer_the_model_with_the_lower_loss(two_models, tmp_path):
    rows = [{"query": TEXTS[0], "positive": TEXTS[0], "negatives": [TEXTS[2]]},
            {"query": TEXTS[1], "positive": TEXTS[1], "negatives": [TEXTS[2]]}]
    info = merge_models(two_models, tmp_path / "auto", examples={"t": rows}, temperature=0.01, show_progress=False)
    losses = [info["example_losses"][str(p)]["t"] for p in two_models]
    assert info["weights"][str(two_models[0])] == pytest.approx(weights_from_losses(losses, 0.01)[0])
    assert (losses[0] < losses[1]) == (info["weights"][str(two_models[0])] > 0.5)


def test_weights_and_examples_are_checked(two_models, tmp_path):
    assert check_weights([3, 1], 2) == [0.75, 0.25]
    assert weights_from_losses([1.0, 1.0]) == [0.5, 0.5]
    for bad in ([1], [-1, 2], [0, 0], [float("nan"), 1]):
        with pytest.raises(InputError, match="weights"):
            check_weights(bad, 2)
    with pytest.raises(InputError, match="at least two models"):
        merge_models(two_models[:1], tmp_path / "x", weights=[1])
    with pytest.raises(InputError, match="either weights"):
        merge_models(two_models, tmp_path / "x")
    with pytest.raises(InputError, match="row 0.*'query' and 'positive'"):
        merge_models(two_models, tmp_path / "x", examples={"t": [{"query": "a"}]})


def test_cli_merge(two_models, tmp_path, capsys):
    from conan_embed.cli import main

    out = tmp_path / "cli"
    assert main(["merge", *map(str, two_models), "--weights", "0.25,0.75", "--output", str(out)]) == 0
    assert "x 0.250" in capsys.readouterr().out and (out / "modules.json").is_file()
    assert main(["merge", *map(str, two_models), "--weights", "a,b", "--output", str(out)]) != 0
    assert "--weights must be comma-separated numbers" in capsys.readouterr().err

"""Saved folders use the classic sentence-transformers layout that older stacks and servers read
(conan_embed.portable), and sentence-transformers 6 loads them back to the same vectors."""

import json

import numpy as np
import pytest

from conan_embed.errors import InputError
from conan_embed.model_loading import load_embedder
from conan_embed.modeling import E5_PROMPTS, build_embedder, save_embedder
from conan_embed.portable import classic_pooling, make_portable
from conan_embed.testing import tiny_bert

TEXTS = ["保险理赔要多久", "人寿保险" * 40, "a"]


def _json(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("portable")
    model = build_embedder(tiny_bert(tmp / "bert", TEXTS), pooling="mean", out_dim=48, max_seq_length=40,
                           dims=(16, 48), prompts=E5_PROMPTS)
    return model, save_embedder(model, tmp / "model")


def test_saved_folder_is_classic(saved):
    _, folder = saved
    assert [m["type"] for m in _json(folder / "modules.json")] == [
        "sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
        "sentence_transformers.models.Dense"]
    assert _json(folder / "sentence_bert_config.json") == {"max_seq_length": 40, "do_lower_case": False}
    assert _json(folder / "1_Pooling/config.json") == {
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True}
    assert _json(folder / "2_Dense/config.json") == {
        "in_features": 32, "out_features": 48, "bias": True, "activation_function": "torch.nn.modules.linear.Identity"}
    assert (folder / "2_Dense/model.safetensors").is_file()
    tokenizer = _json(folder / "tokenizer_config.json")
    assert tokenizer["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert not {"backend", "is_local", "local_files_only"} & set(tokenizer)
    config = _json(folder / "config.json")
    assert config["torch_dtype"] == config["dtype"]


def test_plain_loading_gives_the_same_vectors(saved):
    from sentence_transformers import SentenceTransformer

    model, folder = saved
    for loaded in (SentenceTransformer(str(folder)), load_embedder(folder)):
        assert loaded.max_seq_length == 40 and loaded[1].pooling_mode == "mean"
        np.testing.assert_allclose(loaded.encode(TEXTS, prompt_name="query"), model.encode(TEXTS, prompt_name="query"),
                                   atol=1e-6)
    # a loaded classic folder saved again is classic again, byte for byte
    before = {p.name: p.read_bytes() for p in folder.rglob("*.json") if p.name != "config_sentence_transformers.json"}
    save_embedder(load_embedder(folder), folder)
    assert before == {p.name: p.read_bytes() for p in folder.rglob("*.json")
                      if p.name != "config_sentence_transformers.json"}


def test_folder_has_what_text_embeddings_inference_parses(saved):
    """TEI reads these files itself, with serde (v1.9.3: router/src/lib.rs ModelConfig, PoolConfig,
    STConfig; backends/src/lib.rs ModuleConfig; backends/candle/src/models/dense.rs DenseConfig): a missing
    key, a wrong type or a module type it does not know stops it at start-up. TEI is a Rust binary that no
    package registry here serves, so this checks its parse rules rather than running it."""
    from safetensors import safe_open
    from tokenizers import Tokenizer

    _, folder = saved
    config = _json(folder / "config.json")
    assert isinstance(config["architectures"], list) and isinstance(config["model_type"], str)
    assert isinstance(config["max_position_embeddings"], int)
    pooling = _json(folder / "1_Pooling/config.json")
    assert pooling["pooling_mode_mean_tokens"] is True and pooling["pooling_mode_cls_token"] is False
    assert isinstance(_json(folder / "sentence_bert_config.json")["max_seq_length"], int)
    known = {f"sentence_transformers.models.{t}" for t in ("Transformer", "Pooling", "Dense", "Normalize")}
    for module in _json(folder / "modules.json"):
        assert isinstance(module["idx"], int) and isinstance(module["name"], str) and module["type"] in known
    dense = _json(folder / "2_Dense/config.json")
    assert dense["activation_function"] in ("torch.nn.modules.linear.Identity", "torch.nn.modules.activation.Tanh")
    with safe_open(str(folder / "2_Dense/model.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert shapes == {"linear.weight": (dense["out_features"], dense["in_features"]),
                      "linear.bias": (dense["out_features"],)}
    Tokenizer.from_file(str(folder / "tokenizer.json"))  # TEI supports fast tokenizers only


def test_classic_pooling_modes():
    assert classic_pooling({"embedding_dimension": 8, "pooling_mode": "cls"})["pooling_mode_cls_token"] is True
    classic = {"word_embedding_dimension": 8, "pooling_mode_mean_tokens": True}
    assert classic_pooling(classic) is classic
    with pytest.raises(InputError, match="pooling_mode 'attention' has no classic equivalent"):
        classic_pooling({"embedding_dimension": 8, "pooling_mode": "attention"})


def test_unknown_module_is_named(tmp_path):
    (tmp_path / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "",
                                                        "type": "my_pkg.FancyEncoder"}]))
    with pytest.raises(InputError, match=r"modules.json.*'my_pkg.FancyEncoder' has no classic"):
        make_portable(tmp_path, max_seq_length=8)
    (tmp_path / "modules.json").write_text("{not json")
    with pytest.raises(InputError, match=r"modules.json.*cannot read"):
        make_portable(tmp_path, max_seq_length=8)


def test_the_stated_length_never_exceeds_the_position_embeddings(tmp_path):
    # build_embedder's default cap (512) is longer than this BERT's 40 positions: the folder says 40
    model = build_embedder(tiny_bert(tmp_path / "bert", TEXTS, max_positions=40), pooling="mean", out_dim=None)
    folder = save_embedder(model, tmp_path / "model")
    assert _json(folder / "sentence_bert_config.json")["max_seq_length"] == 40
    assert load_embedder(folder).encode(["保险" * 100]).shape == (1, 32)

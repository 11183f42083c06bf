"""ONNX export (fp32 and int8, where sentence-transformers looks for the files) and the onnx backend
that every command can run instead of PyTorch."""

import json

import numpy as np
import pytest

from conan_embed.errors import InputError
from conan_embed.model_loading import load_embedder
from conan_embed.modeling import E5_PROMPTS, build_embedder, save_embedder
from conan_embed.onnx_export import export_model
from conan_embed.onnx_runtime import onnx_file_name
from conan_embed.testing import tiny_bert

TEXTS = ["保险理赔要多久", "人寿保险的现金价值", "汽车保险包括哪些费用"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    model = build_embedder(tiny_bert(tmp / "bert", TEXTS + ["query: passage: "]), pooling="mean", out_dim=24,
                           max_seq_length=32, dims=(8, 24), prompts=E5_PROMPTS)
    return save_embedder(model, tmp / "model")


def test_export_fp32_and_int8_agree_with_torch(folder):
    fp32 = export_model(folder, check_size=None)
    int8 = export_model(folder, quantize="int8", arch="avx512_vnni", check_size="tiny")
    assert fp32["file"] == "onnx/model.onnx" and int8["file"] == "onnx/model_qint8_avx512_vnni.onnx"
    assert json.loads((folder / "onnx/model_qint8_avx512_vnni.export.json").read_text())["quantize"] == "int8"
    assert int8["agreement"]["passage"]["min_cosine"] > 0.999 and set(int8["retrieval"]) == {"size", "torch", "onnx_int8"}
    torch_model = load_embedder(folder)
    want = torch_model.encode(TEXTS, prompt_name="query", normalize_embeddings=True)
    for file, atol in (("onnx/model.onnx", 1e-5), ("onnx/model_qint8_avx512_vnni.onnx", 2e-2)):
        onnx = load_embedder(folder, backend="onnx", onnx_file=file)
        assert onnx.conan_backend == {"backend": "onnx", "file": file}
        got = onnx.encode(TEXTS, prompt_name="query", normalize_embeddings=True)
        np.testing.assert_allclose(got, want, atol=atol)
        cut = load_embedder(folder, backend="onnx", onnx_file=file, truncate_dim=8).encode(TEXTS)
        assert cut.shape == (3, 8)


def test_bad_settings_and_missing_exports(folder, tmp_path):
    with pytest.raises(InputError, match="arch must be one of"):
        onnx_file_name("int8", "sse4")
    with pytest.raises(InputError, match="quantize must be int8"):
        export_model(folder, quantize="int4")
    with pytest.raises(InputError, match="no modules.json"):
        export_model(tmp_path)
    with pytest.raises(InputError, match=r"no ONNX export 'onnx/model_qint8_arm64.onnx'.*conan-embed export"):
        load_embedder(folder, backend="onnx", onnx_file="onnx/model_qint8_arm64.onnx")
    with pytest.raises(InputError, match="backend must be torch or onnx"):
        load_embedder(folder, backend="tensorrt")


def test_cli_export_then_encode_and_eval_on_onnx(folder, tmp_path, capsys):
    from conan_embed.cli import main

    assert main(["export", str(folder), "--quantize", "int8", "--arch", "arm64", "--no-check"]) == 0
    assert "model_qint8_arm64.onnx" in capsys.readouterr().out
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS))
    assert main(["encode", str(folder), "--input", str(tmp_path / "texts.txt"), "--output", str(tmp_path / "e.npy"),
                 "--backend", "onnx", "--onnx-file", "onnx/model_qint8_arm64.onnx", "--dim", "8"]) == 0
    assert np.load(tmp_path / "e.npy").shape == (3, 8)
    assert main(["encode", str(folder), "--input", str(tmp_path / "texts.txt"), "--output", str(tmp_path / "f.npy"),
                 "--onnx-file", "onnx/model.onnx"]) == 2
    assert "--onnx-file is for --backend onnx" in capsys.readouterr().err


def test_mine_on_onnx_caches_apart_from_torch(folder, train_data, tmp_path):
    from conan_embed.mining import MineConfig, mine

    export_model(folder, check_size=None)
    config = MineConfig(top_k=5, cache_dir=str(tmp_path / "cache"), relative_margin=None)
    args = (train_data / "finetune/retrieval.jsonl", train_data / "finetune/corpus.jsonl")
    on_torch = mine(folder, *args, tmp_path / "t.jsonl", config, show_progress=False)
    on_onnx = mine(load_embedder(folder, backend="onnx"), *args, tmp_path / "o.jsonl", config, show_progress=False)
    assert on_onnx["cache"]["passage"] != on_torch["cache"]["passage"] and on_onnx["rows"] == on_torch["rows"]

import json

import numpy as np
import pytest

from conan_embed.cli import main
from conan_embed.model_loading import load_embedder
from conan_embed.modeling import E5_PROMPTS, build_embedder, save_embedder
from conan_embed.testing import tiny_bert

TEXTS = ["汽车保险怎么理赔？", "人寿保险的现金价值", "这本书质量很好"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    base = tiny_bert(root / "bert", TEXTS)
    model = build_embedder(base, pooling="mean", out_dim=64, dims=(16, 32), prompts=E5_PROMPTS, max_seq_length=64)
    return save_embedder(model, root / "model")


def test_encode_writes_normalised_truncated_embeddings(tiny_model, tmp_path):
    src = tmp_path / "texts.jsonl"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS), encoding="utf-8")
    out = tmp_path / "emb.npy"
    assert main(["encode", str(tiny_model), "--input", str(src), "--output", str(out), "--dim", "16",
                 "--prompt", "query"]) == 0
    emb = np.load(out)
    assert emb.shape == (3, 16) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    expected = load_embedder(tiny_model, truncate_dim=16).encode(TEXTS, prompt_name="query", normalize_embeddings=True)
    np.testing.assert_allclose(emb, expected, atol=1e-5)


def test_saved_model_carries_matryoshka_dims_and_prompts(tiny_model):
    model = load_embedder(tiny_model)
    assert model.conan_matryoshka_dims == (16, 32, 64)
    assert model.prompts["query"] == "query: "


@pytest.mark.parametrize("args, message", [
    (["--input", "{tmp}/none.txt", "--output", "{tmp}/e.npy"], "none.txt: file not found"),
    (["--input", "{tmp}/t.jsonl", "--output", "{tmp}/e.npy", "--field", "body"], "t.jsonl, row 1: field 'body' must be a non-empty string"),
    (["--input", "{tmp}/t.jsonl", "--output", "{tmp}/e.csv"], "output must be a .npy file"),
    (["--input", "{tmp}/t.jsonl", "--output", "{tmp}/e.npy", "--dim", "65"], "dim must be between 1 and the model's output size 64"),
    (["--input", "{tmp}/t.jsonl", "--output", "{tmp}/e.npy", "--prompt", "passage"], "no prompt 'passage'"),
])
def test_encode_bad_input_is_one_clear_line(tiny_model, tmp_path, capsys, args, message):
    (tmp_path / "t.jsonl").write_text('{"text": "保险"}\n', encoding="utf-8")
    code = main(["encode", str(tiny_model)] + [a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_missing_model_folder(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("保险\n", encoding="utf-8")
    code = main(["encode", str(tmp_path / "nomodel"), "--input", str(tmp_path / "t.txt"),
                 "--output", str(tmp_path / "e.npy")])
    assert code == 2 and "nomodel: model folder does not exist" in capsys.readouterr().err


def test_encode_streams_large_files_in_chunks(tiny_model, tmp_path):
    from conan_embed.encode import encode_file

    texts = [f"{t}{i}" for i in range(7) for t in TEXTS]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n\n", encoding="utf-8")
    shape = encode_file(str(tiny_model), tmp_path / "t.txt", tmp_path / "e.npy", dim=32, chunk_size=4,
                        show_progress=False)
    assert shape == (21, 32)
    expected = load_embedder(tiny_model, truncate_dim=32).encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), expected, atol=1e-5)
    # a failure after the model loaded leaves neither a half-written .npy nor a temporary file
    with pytest.raises(Exception, match="no prompt"):
        encode_file(str(tiny_model), tmp_path / "t.txt", tmp_path / "f.npy", prompt_name="nope", chunk_size=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy", "t.txt"]


def test_export_arch_choices_are_the_backends():
    from conan_embed.onnx_runtime import ARCHS
    from conan_embed.cli import build_parser

    export = build_parser()._subparsers._group_actions[0].choices["export"]
    assert next(a for a in export._actions if a.dest == "arch").choices == ARCHS

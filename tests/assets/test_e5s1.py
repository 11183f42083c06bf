import struct

import numpy as np
import pytest
import torch

from conan_embed.assets.convert import bert_parameter_name, write_bert_folder
from conan_embed.assets.e5s1 import dequantize_q4_0, quantize_q4_0, read_e5s1, write_e5s1
from conan_embed.errors import AssetError


def test_q4_0_block_by_hand():
    # scale 0.5; byte j holds weight j (low nibble) and weight j + 16 (high nibble)
    block = np.float16(0.5).tobytes() + bytes([0x1F] + [0x88] * 15)
    w = dequantize_q4_0(block, 32)
    assert w[0] == (15 - 8) * 0.5 and w[16] == (1 - 8) * 0.5
    assert np.all(w[1:16] == 0) and np.all(w[17:] == 0)


def test_quantize_dequantize_is_close_for_any_weights():
    x = np.random.default_rng(1).standard_normal(32 * 10).astype(np.float32)
    err = np.abs(dequantize_q4_0(quantize_q4_0(x), x.size) - x).reshape(10, 32)
    step = np.abs(x).reshape(10, 32).max(1, keepdims=True) / 8
    # round-to-nearest is within half a step; only a weight at the opposite extreme of the
    # block's largest one can be clipped (nibbles span -8..+7), by at most one step
    assert np.all(err <= step * 1.001)
    assert np.mean(err <= step / 2 * 1.001) > 0.95


def test_synthetic_file_round_trips_exactly(tmp_path, synthetic):
    model, _ = synthetic
    path = write_e5s1(tmp_path / "m.bin", model)
    back = read_e5s1(path)
    assert back.header == model.header
    assert back.pieces == model.pieces and back.special_ids == model.special_ids
    np.testing.assert_array_equal(back.scores, model.scores)
    assert back.tensors.keys() == model.tensors.keys()
    for name, tensor in model.tensors.items():
        np.testing.assert_array_equal(back.tensors[name], tensor, err_msg=name)
    # and byte for byte: writing what we read reproduces the file
    assert write_e5s1(tmp_path / "again.bin", back).read_bytes() == path.read_bytes()


def test_converted_bert_holds_the_same_weights(tmp_path, synthetic):
    model, tokenizer = synthetic
    out = write_bert_folder(model, tokenizer, tmp_path / "bert")
    from transformers import BertModel

    bert = BertModel.from_pretrained(out)
    params = dict(bert.named_parameters())
    for name, tensor in model.tensors.items():
        expected = tensor[: len(model.pieces)] if name == "emb.word" else tensor
        torch.testing.assert_close(params[bert_parameter_name(name)].detach(), torch.from_numpy(expected),
                                   rtol=0, atol=0, msg=name)
    assert bert.config.vocab_size == len(model.pieces)


@pytest.mark.parametrize("cut", [3, 20, 200, 2000, -1])
def test_truncated_file_is_a_clear_error(tmp_path, synthetic, cut):
    data = write_e5s1(tmp_path / "m.bin", synthetic[0]).read_bytes()
    bad = tmp_path / "cut.bin"
    bad.write_bytes(data[:cut])
    with pytest.raises(AssetError, match=r"cut\.bin.*(truncated|bad magic)"):
        read_e5s1(bad)


def test_corrupt_headers_are_clear_errors(tmp_path, synthetic):
    data = bytearray(write_e5s1(tmp_path / "m.bin", synthetic[0]).read_bytes())
    cases = {
        "bad magic": b"GGUF" + bytes(data[4:]),
        "unsupported E5S1 version 7": bytes(data[:4]) + struct.pack("<I", 7) + bytes(data[8:]),
        "implausible E5S1 header": bytes(data[:8]) + struct.pack("<i", 30) + bytes(data[12:]),
    }
    for message, payload in cases.items():
        (tmp_path / "bad.bin").write_bytes(payload)
        with pytest.raises(AssetError, match=message):
            read_e5s1(tmp_path / "bad.bin")
    with pytest.raises(AssetError, match="cannot read"):
        read_e5s1(tmp_path / "missing.bin")


def test_wrong_tokenizer_is_refused(tmp_path, synthetic):
    model, tok = synthetic
    tok["model"]["vocab"][5][0] = "X"
    with pytest.raises(ValueError, match="wrong tokenizer"):
        write_bert_folder(model, tok, tmp_path / "bert")

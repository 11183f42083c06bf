"""ONNX Runtime in place of the PyTorch transformer: fp32, or int8 by dynamic quantisation.

`use_onnx` runs an export (`onnx/model.onnx`, `onnx/model_qint8_<arch>.onnx`: sentence-transformers'
file names; written by `conan_embed.onnx_export`) in place of the PyTorch transformer of a loaded
model: tokenisation, pooling, the Dense head, Matryoshka cuts and every caller (serve, encode, eval,
mine) stay the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from conan_embed.errors import InputError

# int8 kernels per CPU family: the file name says which (sentence-transformers' convention); avx2 and
# arm64 quantise weights to 7 bits (reduce_range), which avoids int16 overflow without VNNI
ARCHS = ("arm64", "avx2", "avx512", "avx512_vnni")


def onnx_file_name(quantize: str | None = None, arch: str = "avx2") -> str:
    """The file (relative to the model folder) of an export: fp32 or int8 for a CPU family."""
    if quantize is None:
        return "onnx/model.onnx"
    if quantize != "int8":
        raise InputError(f"quantize must be int8 or none, got {quantize!r}", field="quantize")
    if arch not in ARCHS:
        raise InputError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}", field="arch")
    return f"onnx/model_qint8_{arch}.onnx"


class OnnxTransformerModel(torch.nn.Module):
    """An ONNX Runtime session where sentence-transformers' Transformer module expects the HF model:
    same inputs, a `last_hidden_state` output, the same `config`."""

    def __init__(self, file: str | Path, config):
        super().__init__()
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        self.config = config
        self.file = str(file)

    def forward(self, input_ids, attention_mask=None, **_unused):
        ids = input_ids.detach().cpu().numpy().astype(np.int64)
        mask = np.ones_like(ids) if attention_mask is None else attention_mask.detach().cpu().numpy().astype(np.int64)
        out = self.session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
        return {"last_hidden_state": torch.from_numpy(out).to(input_ids.device)}


def use_onnx(model, folder: str | Path, file: str | None = None):
    """Run `folder`/`file` (default onnx/model.onnx) in place of `model`'s PyTorch transformer."""
    folder = Path(folder)
    path = folder / (file or onnx_file_name())
    if not path.is_file():
        raise InputError(f"no ONNX export {file or onnx_file_name()!r} in the model folder: run `conan-embed export "
                         f"{folder} --format onnx` first (add --quantize int8 for the int8 file)", path=path)
    transformer = model[0]
    transformer.model = OnnxTransformerModel(path, transformer.auto_model.config)
    model.conan_backend = {"backend": "onnx", "file": str(path.relative_to(folder))}
    return model

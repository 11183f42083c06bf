"""`conan-embed export`: a model's transformer as ONNX (fp32, or int8 by dynamic quantisation), checked
against PyTorch on the suite.

`export_onnx` writes the model's transformer where sentence-transformers looks for it
(`onnx/model.onnx`, `onnx/model_qint8_<arch>.onnx`), so `SentenceTransformer(path, backend="onnx",
model_kwargs={"file_name": "onnx/model_qint8_avx2.onnx"})` loads it in any stack that has optimum.
`conan_embed.onnx_runtime.use_onnx` runs such a file in place of the PyTorch transformer of a loaded
model.

Why not sentence-transformers' own `export_optimized_onnx_model` / `backend="onnx"` here: they need
optimum's ONNX Runtime part (optimum-onnx), which pins transformers < 4.58 and cannot be installed
beside transformers 5. So we export with torch.onnx (the TorchScript exporter: dynamic batch and
sequence axes, opset 17) and quantise with onnxruntime.quantization, into the same files and names.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from conan_embed.errors import InputError
from conan_embed.evaluation.data import build_suite_data
from conan_embed.evaluation.sizes import get_size
from conan_embed.evaluation.suite import run_suite
from conan_embed.files import write_json
from conan_embed.model_loading import load_embedder
from conan_embed.onnx_runtime import onnx_file_name

OPSET = 17


class _LastHiddenState(torch.nn.Module):
    """The HF model as a function of (input_ids, attention_mask) only: the graph the export traces."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export_onnx(model, folder: str | Path, *, quantize: str | None = None, arch: str = "avx2") -> Path:
    """Export a loaded SentenceTransformer's transformer into `folder`/onnx/; returns the file written.
    int8 starts from the fp32 file (exported first when missing)."""
    folder = Path(folder)
    target = folder / onnx_file_name(quantize, arch)
    fp32 = folder / onnx_file_name()
    fp32.parent.mkdir(parents=True, exist_ok=True)
    if quantize is None or not fp32.is_file():
        transformer = model[0]
        sample = transformer.tokenizer(["query: 导出", "passage: 导出一个较长的句子"], padding=True, return_tensors="pt")
        axes = {"batch": 0, "sequence": 1}
        dynamic = {name: {i: n for n, i in axes.items()} for name in ("input_ids", "attention_mask", "last_hidden_state")}
        graph = _LastHiddenState(transformer.auto_model).eval().cpu()
        tmp = fp32.with_name(f".{fp32.name}.tmp")
        with torch.no_grad():
            torch.onnx.export(graph, (sample["input_ids"], sample["attention_mask"]), str(tmp),
                              input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
        tmp.replace(fp32)
    if quantize is not None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = target.with_name(f".{target.name}.tmp")
        # per-channel weight scales: cosine to fp32 0.990 instead of 0.966 on the quickstart model
        # (docs/serving.md); activations are quantised per batch at run time
        quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=arch in ("avx2", "arm64"))
        tmp.replace(target)
    return target


def agreement(reference, other, texts: list[str], prompt_name: str | None = None) -> dict:
    """Cosine between two models' normalised embeddings of the same texts: min and mean."""
    a = reference.encode(texts, prompt_name=prompt_name, normalize_embeddings=True, show_progress_bar=False)
    b = other.encode(texts, prompt_name=prompt_name, normalize_embeddings=True, show_progress_bar=False)
    cosines = (np.asarray(a) * np.asarray(b)).sum(axis=1)
    return {"texts": len(texts), "min_cosine": round(float(cosines.min()), 6), "mean_cosine": round(float(cosines.mean()), 6)}


def probe_texts() -> tuple[list[str], list[str]]:
    """Shipped insuranceqa test questions (24) and answers (120), offline: what exports are checked on."""
    data = build_suite_data(get_size("tiny"), split="test").retrieval
    return list(data.queries.values()), list(data.corpus.values())


def export_model(folder: str | Path, *, quantize: str | None = None, arch: str = "avx2",
                 check_size: str | None = "quick", max_retrieval_drop: float = 0.01) -> dict:
    """`conan-embed export`: write the ONNX file(s) into `folder`/onnx/, then check them against PyTorch
    fp32: cosine on insuranceqa questions and answers and, for int8 with `check_size`, the local suite's
    Retrieval (a drop of more than `max_retrieval_drop` nDCG@10 is a warning). Written beside the file
    (onnx/<name>.export.json)."""
    folder = Path(folder)
    if not (folder / "modules.json").is_file():
        raise InputError("not a sentence-transformers model folder (no modules.json)", path=folder)
    onnx_file_name(quantize, arch)  # bad settings fail before the model loads
    start = time.perf_counter()
    # padded: the graph traced for ONNX takes padded batches (input_ids + attention_mask)
    reference = load_embedder(folder, device="cpu", padding_free=False)
    target = export_onnx(reference, folder, quantize=quantize, arch=arch)
    file = str(target.relative_to(folder))
    report = {"file": file, "quantize": quantize, "arch": arch if quantize else None,
              "bytes": target.stat().st_size, "export_s": round(time.perf_counter() - start, 1), "warnings": []}
    if check_size is not None:
        onnx = load_embedder(folder, device="cpu", backend="onnx", onnx_file=file)
        queries, passages = probe_texts()
        report["agreement"] = {"query": agreement(reference, onnx, queries, "query"),
                               "passage": agreement(reference, onnx, passages, "document")}
        if quantize is not None:
            scores = {name: run_suite(model, size=check_size, tasks="Retrieval", show_progress=False,
                                      guard=False)["categories"]["Retrieval"]
                      for name, model in (("torch", reference), ("onnx_int8", onnx))}
            report["retrieval"] = {"size": check_size, **{k: round(v, 4) for k, v in scores.items()}}
            if scores["onnx_int8"] < scores["torch"] - max_retrieval_drop:
                report["warnings"].append(
                    f"{file}: {check_size} Retrieval nDCG@10 {scores['onnx_int8']:.4f}, "
                    f"{100 * (scores['torch'] - scores['onnx_int8']):.2f} points below fp32 ({scores['torch']:.4f}); "
                    f"try another --arch or keep fp32")
    write_json(target.with_name(target.stem + ".export.json"), report)
    lines = [f"wrote {folder / file} ({report['bytes'] / 2**20:.1f} MiB) in {report['export_s']:.0f} s"]
    for kind, a in (report.get("agreement") or {}).items():
        lines.append(f"  {kind} cosine vs torch fp32 over {a['texts']} texts: min {a['min_cosine']:.6f}, "
                     f"mean {a['mean_cosine']:.6f}")
    if "retrieval" in report:
        r = report["retrieval"]
        lines.append(f"  Retrieval nDCG@10 ({r['size']} suite): torch fp32 {r['torch']:.4f}, int8 {r['onnx_int8']:.4f}")
    report["summary"] = "\n".join(lines)
    return report

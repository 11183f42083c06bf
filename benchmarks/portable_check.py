"""Does a model folder we saved load in an older stack, with the same vectors? (issue 14; docs/serving.md)

Builds a separate virtual environment with an older sentence-transformers and transformers (default:
sentence-transformers 3.4.1 + transformers 4.46.3, the stack most serving images still pin), loads the
folder there with plain `SentenceTransformer(path)`, encodes insuranceqa questions and answers with the
model's query / document prompts at the full dim and at a Matryoshka cut, and compares the vectors with
ours (sentence-transformers 6, transformers 5). The environment is built once (needs the package
registry; afterwards it runs offline) and reused.

    .venv/bin/python benchmarks/portable_check.py runs/quickstart/model
    .venv/bin/python benchmarks/portable_check.py MODEL --stack "sentence-transformers==5.1.2 transformers==4.57.6"
    .venv/bin/python benchmarks/portable_check.py MODEL --python .venv/bin/python   # smoke run: no registry

`--python` loads the folder with that interpreter's stack as it is, instead of building --stack's
environment (our own interpreter compares the stack with itself: the script's plumbing, offline).

Last line: RESULT portable_check stack=<...> texts=<n> max_abs_diff=<...> min_cosine=<...> ok=<true|false>;
exits 1 when the folder does not load there or a vector differs by more than --tolerance.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_STACK = "sentence-transformers==3.4.1 transformers==4.46.3"
# run inside the old environment: argv = folder, texts.json, out.npz
OLD_SIDE = r"""
import json, sys
import numpy as np
import sentence_transformers, transformers
from sentence_transformers import SentenceTransformer
folder, texts_file, out = sys.argv[1:4]
texts = json.load(open(texts_file, encoding="utf-8"))
model = SentenceTransformer(folder, device="cpu")
dim = texts["dim"]
arrays = {kind: model.encode(texts[kind], prompt_name=prompt, batch_size=16, normalize_embeddings=True)
          for kind, prompt in (("queries", "query"), ("passages", "document"))}
cut = SentenceTransformer(folder, device="cpu", truncate_dim=dim)
arrays["queries_cut"] = cut.encode(texts["queries"], prompt_name="query", batch_size=16, normalize_embeddings=True)
np.savez(out, **arrays)
print(json.dumps({"sentence_transformers": sentence_transformers.__version__,
                  "transformers": transformers.__version__, "max_seq_length": model.max_seq_length,
                  "modules": [type(m).__name__ for m in model]}))
"""


def build_venv(root: Path, requirements: str, torch: str) -> Path:
    """The python of a virtual environment under `root` holding `torch`, then `requirements` (built once:
    the folder is named after what it holds and a marker says it is complete). serve_peers.py uses it too."""
    wanted = f"{torch} {requirements}"
    folder = root / hashlib.sha256(wanted.encode()).hexdigest()[:10]
    python, marker = folder / "bin" / "python", folder / ".conan-embed-venv"
    if python.exists() and marker.is_file() and marker.read_text() == wanted:
        return python
    print(f"building {folder} with {wanted} (once; needs the package registry)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + [torch], check=True)  # first, so the rest does not pull another torch build
    subprocess.run(pip + requirements.split(), check=True)
    marker.write_text(wanted)
    return python


def sample_texts(n: int) -> dict[str, list[str]]:
    """n insuranceqa test questions and answers (shipped offline), plus a few edge cases."""
    from conan_embed.onnx_export import probe_texts

    queries, passages = probe_texts()
    # no text with surrounding whitespace (nor the empty text): sentence-transformers <= 5 strips every
    # text before tokenising and 6 does not, so those differ between the stacks whatever the folder
    edge = ["a", "保" * 600, "Mixed 中英文 text with emoji 🙂 and numbers 12345"]
    return {"queries": queries[:n] + edge, "passages": passages[:n] + edge}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="runs/quickstart/model", help="model folder (default: %(default)s)")
    p.add_argument("--stack", default=DEFAULT_STACK, help="pip requirements of the old stack (default: %(default)s)")
    p.add_argument("--torch", default="torch==2.13.0", help="torch requirement, installed first (default: %(default)s)")
    p.add_argument("--venvs", default="runs/portable-check", help="where the environments go (default: %(default)s)")
    p.add_argument("--python", help="the old side's interpreter, used as it is: no environment is built "
                   "(default: --stack's environment under --venvs)")
    p.add_argument("--texts", type=int, default=48, help="questions and answers each (default: %(default)s)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |difference| per coordinate (default: %(default)s)")
    args = p.parse_args(argv)

    from conan_embed.model_loading import load_embedder

    folder = Path(args.model).resolve()
    python = Path(args.python) if args.python else build_venv(Path(args.venvs), f"{args.stack} numpy<3", args.torch)
    stack = f"python:{args.python}" if args.python else args.stack
    texts = sample_texts(args.texts)
    ours = load_embedder(folder, device="cpu")
    dim = min(ours.conan_matryoshka_dims)
    texts["dim"] = dim
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "texts.json").write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
        done = subprocess.run([str(python), "-c", OLD_SIDE, str(folder), f"{tmp}/texts.json", f"{tmp}/out.npz"],
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode != 0:
            print(done.stderr[-4000:])
            print(f"RESULT portable_check stack=\"{stack}\" loads=false ok=false")
            return 1
        info = json.loads(done.stdout.strip().splitlines()[-1])
        theirs = dict(np.load(f"{tmp}/out.npz"))
    mine = {"queries": ours.encode(texts["queries"], prompt_name="query", normalize_embeddings=True),
            "passages": ours.encode(texts["passages"], prompt_name="document", normalize_embeddings=True)}
    cut = mine["queries"][:, :dim]
    mine["queries_cut"] = cut / np.linalg.norm(cut, axis=1, keepdims=True)
    worst, cosine = 0.0, 1.0
    print(f"old stack: sentence-transformers {info['sentence_transformers']}, transformers {info['transformers']}, "
          f"modules {info['modules']}, max_seq_length {info['max_seq_length']} ({time.perf_counter() - start:.0f} s)")
    for kind, a in mine.items():
        b = theirs[kind]
        diff = float(np.abs(a - b).max())
        cosines = (a * b).sum(axis=1)
        cos, at = float(cosines.min()), int(cosines.argmin())
        worst, cosine = max(worst, diff), min(cosine, cos)
        source = texts["queries" if kind.startswith("queries") else kind]
        print(f"  {kind:12s} {len(a):4d} x {a.shape[1]:4d}: max |diff| {diff:.2e}, min cosine {cos:.6f} "
              f"(text {at}: {source[at][:30]!r})")
    ok = worst <= args.tolerance and info["max_seq_length"] == ours.max_seq_length
    print(f"RESULT portable_check stack=\"{stack}\" texts={sum(len(v) for v in mine.values())} "
          f"max_abs_diff={worst:.2e} min_cosine={cosine:.6f} ok={str(ok).lower()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

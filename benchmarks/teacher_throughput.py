"""Teacher scoring throughput (pairs/s): our `TeacherScorer` against plain sentence-transformers, in one run.

Ours: `conan_embed.curate.teacher.TeacherScorer.score` (each side with its own token cap, sorted-by-length
batches as `SentenceTransformer.encode` does, bf16 autocast when asked). Theirs: the obvious script,
`model.encode(queries)` and `model.encode(passages)` with one cap for both sides (the model's), then the
row-wise dot product. Same model, texts, batch size and precision; ABBA order; median of repeats.

The model is a random-init BERT of the chosen shape (`large` = bge-large-zh / BERT-large: 24 layers,
1024 hidden) with a character vocabulary over the texts: speed depends on the shape, not the weights.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/teacher_throughput.py --pairs data/pretrain/weak_pairs.jsonl \
        [--n 4096] [--shape large|base|small] [--caps 64,512] [--batch-size 256] [--precision bf16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from conan_embed.curate.curate_config import TeacherConfig
from conan_embed.curate.teacher import TeacherScorer
from conan_embed.testing import tiny_bert

SHAPES = {"large": dict(hidden=1024, layers=24, heads=16, intermediate=4096),
          "base": dict(hidden=768, layers=12, heads=12, intermediate=3072),
          "small": dict(hidden=384, layers=12, heads=12, intermediate=1536)}


def plain_scores(model, queries, passages, batch_size, bf16):
    ctx = torch.autocast(device_type=model.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with ctx:
        q = model.encode(queries, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
        p = model.encode(passages, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    return (q.astype(np.float32) * p.astype(np.float32)).sum(1)


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", required=True, help="a JSONL file of {query, passage} rows")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--shape", default="large", choices=list(SHAPES))
    ap.add_argument("--caps", default="64,512", help="query,passage token caps for ours; theirs uses the max")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    rows = [json.loads(line) for line in open(args.pairs, encoding="utf-8")][: args.n]
    queries, passages = [r["query"] for r in rows], [r["passage"] for r in rows]
    qcap, pcap = map(int, args.caps.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_bert(Path(tmp) / "teacher", queries + passages, max_positions=max(qcap, pcap), **SHAPES[args.shape])
        cfg = TeacherConfig(model=str(path), max_length={"query": qcap, "passage": pcap}, precision=args.precision,
                            batch_size=args.batch_size)
        ours = TeacherScorer(cfg)
        model = ours.model
        model.max_seq_length = max(qcap, pcap)
        bf16 = args.precision == "bf16"
        ours.score(queries[:256], passages[:256])  # warm-up (kernels, allocator)
        times = {"ours": [], "plain": []}
        for rep in range(args.repeats):
            for name in (("ours", "plain") if rep % 2 == 0 else ("plain", "ours")):
                if name == "ours":
                    sec, (s_ours, _) = timed(lambda: ours.score(queries, passages))
                else:
                    sec, s_plain = timed(lambda: plain_scores(model, queries, passages, args.batch_size, bf16))
                times[name].append(sec)
    rate = {k: len(rows) / statistics.median(v) for k, v in times.items()}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"{len(rows)} pairs, shape {args.shape}, caps {qcap}/{pcap} (plain: {max(qcap, pcap)} both), "
          f"{args.precision}, batch {args.batch_size}, {device}")
    for k in ("ours", "plain"):
        print(f"  {k:<6} {rate[k]:9.1f} pairs/s   (runs: {', '.join(f'{t:.2f}s' for t in times[k])})")
    print(f"  score agreement: mean |ours - plain| = {np.abs(s_ours - s_plain).mean():.4f} (differs by the query cap)")
    print(f"RESULT teacher pairs={len(rows)} shape={args.shape} ours_pairs_per_s={rate['ours']:.1f} "
          f"plain_pairs_per_s={rate['plain']:.1f} ratio={rate['ours'] / rate['plain']:.2f}")


if __name__ == "__main__":
    main()

"""The server engine's forward passes, eager vs `--compile` (docs/serving.md, "On a GPU").

Both engines are `conan_embed.serving.engine.EmbeddingEngine`s on the same model and device; the compiled
one runs `torch.compile(dynamic=True)` (on a GPU: CUDA graphs, with shapes rounded up to buckets). The
texts are serve_load.py's insuranceqa requests with the e5 prompts, tokenised and cut into passes as the
server's batcher cuts them (`plan_batches`, the engine's measured pass cost); every pass runs in the
engine's inference thread, one after the other (no HTTP, no overlap: the forward pass alone). Rounds
alternate eager and compiled; texts/s is the median. The compile cost is the compiled engine's load
time minus the eager one's.

    .venv/bin/python benchmarks/compile_forward.py --model runs/quickstart/model
    .venv/bin/python benchmarks/compile_forward.py --model runs/quickstart/model --device cuda --precision bf16

Last line: RESULT compile_forward device=... eager_texts_s=... compiled_texts_s=... ratio=<compiled / eager>
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import make_requests  # noqa: E402

PROMPTS = {"query": "query: ", "passage": "passage: "}


def passes(engine, reqs, max_batch_tokens: int):
    from conan_embed.serving.dynamic_batching import PendingText, plan_batches

    items = []
    for kind in ("query", "passage"):
        texts = [t for r in reqs if r.kind == kind for t in r.texts]
        items += [PendingText(ids, kind, None) for ids in engine._tokenize(texts, PROMPTS[kind], True)]
    plan = plan_batches([p.tokens for p in items], [p.group for p in items], max_batch_tokens,
                        engine.batcher.pass_overhead_tokens)
    return [[items[i] for i in idx] for idx in plan]


def run_all(engine, batches) -> tuple[float, np.ndarray]:
    def work():
        t0 = time.perf_counter()
        rows = [engine._infer(b) for b in batches]
        return time.perf_counter() - t0, np.concatenate(rows)

    return engine.batcher.run_in_inference_thread(work)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/quickstart/model", help="model folder (default: %(default)s)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--requests", type=int, default=128, help="serve_load requests (default: %(default)s)")
    p.add_argument("--max-batch-tokens", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from conan_embed.serving.engine import EmbeddingEngine

    engines, load_s = {}, {}
    for name in ("eager", "compiled"):
        engine = EmbeddingEngine(args.model, device=args.device, precision=args.precision,
                                 max_batch_tokens=args.max_batch_tokens, compile=name == "compiled")
        t0 = time.perf_counter()
        engine.load()
        load_s[name] = time.perf_counter() - t0
        engines[name] = engine
    reqs = make_requests(args.requests, 0.3, args.seed)
    batches = passes(engines["eager"], reqs, args.max_batch_tokens)
    n = sum(len(b) for b in batches)
    for name in engines:  # the compiled engine compiles (and records graphs for) every bucket here
        run_all(engines[name], batches)
    rates: dict[str, list[float]] = {name: [] for name in engines}
    out = {}
    for round_ in range(args.repeats):
        for name, engine in engines.items():
            seconds, out[name] = run_all(engine, batches)
            rates[name].append(n / seconds)
            print(f"[round {round_ + 1}] {name}: {n / seconds:.1f} texts/s", flush=True)
    diff = float(np.abs(out["eager"] - out["compiled"]).max())
    eager, compiled = statistics.median(rates["eager"]), statistics.median(rates["compiled"])
    print(f"\n{n} texts in {len(batches)} passes on {args.device} ({args.precision}); shape buckets: "
          f"{engines['compiled'].shape_buckets}; CUDA graphs: {engines['compiled']._cuda_graphs}")
    print(f"largest difference between eager and compiled outputs: {diff:.2e}")
    print(f"RESULT compile_forward device={args.device} precision={args.precision} eager_texts_s={eager:.1f} "
          f"compiled_texts_s={compiled:.1f} ratio={compiled / eager:.2f} "
          f"compile_s={load_s['compiled'] - load_s['eager']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

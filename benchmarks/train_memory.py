"""Peak training memory against batch size, GradCache (`loss.mini_batch_size`) against the plain step.

Each setting trains `--steps` steps of `train_stage` on a one-task recipe (retrieval: query, positive and
K hard negatives; InfoNCE with in-batch negatives; the padding-free forward) in a fresh process, so that
its peak is its own. On a CPU the peak is the process's peak resident set (`ru_maxrss`); "training"
memory is that peak minus the resident set when training starts (model loaded, data indexed), which is
what grows with the batch. On a GPU: `torch.cuda.max_memory_allocated`. Time per example is the median
step (after the first) divided by the batch size.

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python benchmarks/train_memory.py \\
        [--model e5-small|tiny|PATH] [--negatives 15] [--batches 32,64,128,256] [--mini-batch 32] \\
        [--steps 3] [--max-length 128] [--fp32] [--device cpu|cuda]

The RESULT line compares the largest cached batch with the smallest uncached one (the acceptance: a
cached batch of 256 at no more than 1.5x the memory of an uncached 32, and no more than 1.5x its time
per example). Uncached settings above `--max-uncached` are skipped (they need the memory this avoids).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(setting: dict) -> dict:
    """One setting, in this process: train, return peak and step times."""
    import resource

    import torch
    from transformers import TrainerCallback

    sys.path.insert(0, str(Path(__file__).parent))
    from train_throughput import make_recipe, prepare

    import conan_embed.recipe.stage_training as stage_module

    if setting["threads"]:
        torch.set_num_threads(setting["threads"])
    args = argparse.Namespace(**setting)
    cuda = setting["device"] == "cuda"

    class Probe(TrainerCallback):
        def __init__(self):
            self.start_rss, self.ends = None, []

        def on_train_begin(self, *a, **kw):
            self.start_rss = _rss_mb()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                self.start_cuda = torch.cuda.memory_allocated() / 2**20

        def on_step_end(self, *a, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory(prefix="train-memory-") as tmp:
        with stage_module._quiet_transformers():
            path, data, prompts = prepare(args, Path(tmp))
        recipe = make_recipe(args, path, data, prompts, Path(tmp) / "run", mini_batch=setting["mini_batch"])
        probe = Probe()
        stage_module.train_stage(recipe, "finetune", show_progress=False, callbacks=[probe])
    steps = [b - a for a, b in zip(probe.ends, probe.ends[1:])]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"peak_mb": peak, "training_mb": peak - probe.start_rss, "step_s": statistics.median(steps),
           "per_example_ms": 1000 * statistics.median(steps) / setting["batch_size"]}
    if cuda:
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["training_mb"] = out["cuda_peak_mb"] - probe.start_cuda
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="e5-small")
    parser.add_argument("--data", default=None, help="default runs/quickstart/data (tiny: a small generated folder)")
    parser.add_argument("--negatives", type=int, default=15, help="hard negatives per query (K + 1 passages each)")
    parser.add_argument("--batches", default="32,64,128,256", help="batch sizes (queries) to try")
    parser.add_argument("--mini-batch", type=int, default=32, help="texts per GradCache mini-batch")
    parser.add_argument("--max-uncached", type=int, default=64, help="largest batch tried without the cache")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--fp32", dest="precision", action="store_const", const="fp32", default="bf16")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--setting", help=argparse.SUPPRESS)  # internal: run one setting, print JSON
    args = parser.parse_args()
    if args.setting:
        print("SETTING " + json.dumps(measure(json.loads(args.setting))))
        return
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is not timed)")
    batches = sorted(int(b) for b in args.batches.split(","))
    runs = [(b, None) for b in batches if b <= args.max_uncached] + [(b, args.mini_batch) for b in batches]
    print(f"model {args.model}, {args.negatives} hard negatives a query (+1 positive), max_length {args.max_length}, "
          f"{args.precision}, {args.device}, {args.steps} steps a setting, mini-batch {args.mini_batch}")
    print(f"{'batch':>6} {'cached':>7} {'peak MB':>9} {'training MB':>12} {'step s':>8} {'ms/example':>11}")
    results = {}
    for batch, mini in runs:
        setting = {"model": args.model, "data": args.data, "batch_size": batch, "negatives": args.negatives,
                   "max_length": args.max_length, "steps": args.steps, "precision": args.precision,
                   "mini_batch": mini, "device": args.device, "threads": args.threads}
        done = subprocess.run([sys.executable, __file__, "--setting", json.dumps(setting)], capture_output=True,
                              text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("SETTING ")]
        if done.returncode or not lines:
            raise SystemExit(f"setting {setting} failed:\n{done.stderr[-3000:]}")
        r = results[(batch, mini)] = json.loads(lines[-1][8:])
        print(f"{batch:>6} {str(mini or '-'):>7} {r.get('cuda_peak_mb', r['peak_mb']):>9.0f} {r['training_mb']:>12.0f} "
              f"{r['step_s']:>8.2f} {r['per_example_ms']:>11.1f}", flush=True)
    small = results[(batches[0], None)] if (batches[0], None) in results else None
    big = results[(batches[-1], args.mini_batch)]
    if small is None:
        raise SystemExit("the smallest batch must run uncached (raise --max-uncached)")
    key = "cuda_peak_mb" if args.device == "cuda" else "peak_mb"
    print(f"RESULT train_memory model={args.model} negatives={args.negatives} uncached_batch={batches[0]} "
          f"cached_batch={batches[-1]} mini_batch={args.mini_batch} uncached_peak_mb={small[key]:.0f} "
          f"cached_peak_mb={big[key]:.0f} uncached_training_mb={small['training_mb']:.0f} "
          f"cached_training_mb={big['training_mb']:.0f} memory_ratio={big[key] / small[key]:.2f} "
          f"training_memory_ratio={big['training_mb'] / small['training_mb']:.2f} "
          f"time_per_example_ratio={big['per_example_ms'] / small['per_example_ms']:.2f}")


if __name__ == "__main__":
    main()

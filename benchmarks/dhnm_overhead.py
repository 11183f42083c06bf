"""What dynamic hard-negative mining costs: the same fine-tune with static and with dynamic negatives.

    .venv/bin/python benchmarks/dhnm_overhead.py                       # tiny BERT, 300 steps, 3 repeats
    .venv/bin/python benchmarks/dhnm_overhead.py --initial-score forward
    .venv/bin/python benchmarks/dhnm_overhead.py --model e5-small --steps 200 --repeats 1

One process runs static, dynamic, static, dynamic, ... (alternating, so machine load drifts hit both) on a
fixed sample of the shipped retrieval rows (`--rows`; each row is seen many times, so the rule has sets
to replace) with the paper's rule checked every `--check-every` steps. Per run: the mean wall time per
step (total training time / steps: this includes the checks, which a median over steps would hide),
the median step, the time spent in checks and the sets replaced. The model defaults to a BERT of
2 layers x 128 (random init, a character vocabulary of the data): its steps are short, so the miner's
per-step bookkeeping weighs more than it would on a real model.

Last line: RESULT dhnm_overhead ... ratio=<static / dynamic mean time per step, medians over repeats>.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from conan_embed.recipe.schema import recipe_from_dict
from conan_embed.recipe.stage_training import stage_paths, train_stage
from conan_embed.training.callbacks import read_log


def _model(kind: str, data_dir: Path, folder: Path) -> str:
    if kind != "tiny":
        return kind
    from conan_embed.data.records import read_records
    from conan_embed.testing import tiny_bert

    if not (folder / "config.json").is_file():
        texts = ["query: passage: "] + [r["query"] for r in read_records(data_dir / "finetune/retrieval.jsonl")]
        texts += [r["text"] for r in read_records(data_dir / "finetune/corpus.jsonl")]
        tiny_bert(folder, texts, hidden=128, layers=2, heads=2, intermediate=512, max_positions=512)
    return str(folder)


def _recipe(args, model: str, data_dir: Path, out: Path, mode: str) -> dict:
    return {
        "name": "dhnm-overhead", "seed": 42, "output_dir": str(out), "data": {"dir": str(data_dir), "build": False},
        "model": {"base": model, "pooling": "mean", "out_dim": None, "matryoshka_dims": [],
                  "max_length": {"query": 64, "passage": 128},
                  "prompts": None if model == "e5-small" else {"query": "query: ", "document": "passage: "}},
        "stages": {"finetune": {
            "init": "model", "max_steps": args.steps, "precision": args.precision,
            "optim": {"lr": args.lr, "warmup": 0.05}, "checkpoint": {"every": 10 * args.steps, "keep": 2},
            "log": {"every": 1, "tensorboard": False},
            "tasks": {"retrieval": {"kind": "retrieval", "file": "finetune/retrieval.jsonl",
                                    "corpus": "finetune/corpus.jsonl", "max_rows": args.rows,
                                    "batch_size": args.batch_size, "negatives": {"count": args.negatives, "skip_top": 10}}},
            "mining": {"mode": mode, "check_every": args.check_every, "initial_score": args.initial_score}}},
        "eval": {"enabled": False},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny (default) or a model folder / shipped name (e5-small)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--check-every", type=int, default=100)
    p.add_argument("--initial-score", default="first_seen", choices=("first_seen", "forward"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--negatives", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--data-dir", help="a build-data folder (default: build one into --output/data)")
    p.add_argument("--output", default="runs/dhnm-overhead")
    args = p.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(args.data_dir) if args.data_dir else out / "data"
    if not (data_dir / "manifest.json").is_file():
        from conan_embed.data.builders import build_all

        build_all(data_dir)
    model = _model(args.model, data_dir, out / "tiny-bert")
    runs = {"static": [], "dynamic": []}
    for repeat in range(args.repeats):
        for mode in runs:
            with tempfile.TemporaryDirectory(dir=out) as tmp:
                recipe = recipe_from_dict(_recipe(args, model, data_dir, Path(tmp), mode))
                summary = train_stage(recipe, "finetune", show_progress=False)
                log = read_log(stage_paths(recipe, "finetune").log)
                checks = read_log(stage_paths(recipe, "finetune").log, "dhnm")
            elapsed = [r["elapsed_s"] for r in log]
            steps = [b - a for a, b in zip([0.0, *elapsed], elapsed)][1:]  # the first step pays for warm-up
            run = {"mean_step_s": (elapsed[-1] - elapsed[0]) / (len(elapsed) - 1), "median_step_s": statistics.median(steps),
                   "check_s": sum(c["check_s"] for c in checks), "checks": len(checks),
                   "replaced": sum(c["replaced"] for c in checks), "train_s": summary["train_seconds"]}
            runs[mode].append(run)
            print(f"[dhnm_overhead] repeat {repeat + 1} {mode:<7} mean step {run['mean_step_s'] * 1000:7.1f} ms, median "
                  f"{run['median_step_s'] * 1000:7.1f} ms, {run['checks']} checks {run['check_s']:.2f} s, "
                  f"{run['replaced']} sets replaced", flush=True)
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("mean_step_s", "median_step_s", "check_s", "replaced")}
           for m, rs in runs.items()}
    ratio = med["static"]["mean_step_s"] / med["dynamic"]["mean_step_s"]
    per_repeat = [s["mean_step_s"] / d["mean_step_s"] for s, d in zip(runs["static"], runs["dynamic"])]
    (out / "results.json").write_text(json.dumps({"args": vars(args), "runs": runs, "medians": med}, indent=2) + "\n")
    print(f"per-repeat ratios (static / dynamic mean step): {', '.join(f'{r:.3f}' for r in per_repeat)}")
    print(f"RESULT dhnm_overhead model={args.model} steps={args.steps} check_every={args.check_every} "
          f"initial_score={args.initial_score} static_step_ms={med['static']['mean_step_s'] * 1000:.1f} "
          f"dynamic_step_ms={med['dynamic']['mean_step_s'] * 1000:.1f} "
          f"static_median_step_ms={med['static']['median_step_s'] * 1000:.1f} "
          f"dynamic_median_step_ms={med['dynamic']['median_step_s'] * 1000:.1f} "
          f"check_s={med['dynamic']['check_s']:.2f} replaced={med['dynamic']['replaced']:.0f} ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

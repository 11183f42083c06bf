"""Static vs dynamic hard negatives: the same recipe, data, steps and seeds; only `mining.mode` differs.

    .venv/bin/python benchmarks/dhnm_vs_static.py --seeds 3
    .venv/bin/python benchmarks/dhnm_vs_static.py --recipe recipes/dhnm-demo.yaml --seeds 3 --set stages.finetune.max_steps=96

For each seed the recipe's last stage is trained with static negatives, then with dynamic ones (alternating,
so machine load drifts hit both), and each model, plus the base once, is scored with the recipe's `eval`
settings (dhnm-demo: the quick suite's Retrieval and Reranking). Writes into --output: report.md (mean ±
sample std over seeds, every seed's scores, the replacement counts), negatives.png (the paper's Figure 3
for the first seed: static vs dynamic), results.json, and one run folder per mode and seed. Resumable:
finished runs and evaluations are reused.

Last line: RESULT dhnm_vs_static ... ratio=<dynamic / static Retrieval, means over seeds>.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from conan_embed.files import write_json, write_text_atomic
from conan_embed.training.callbacks import read_log
from conan_embed.training.config import load_recipe
from conan_embed.training.plots import plot_hard_negative_scores
from conan_embed.training.run import evaluate_model, prepare_data, run_recipe
from conan_embed.training.stage import init_model_path, stage_paths

MODES = ("static", "dynamic")


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(values: list[float]) -> str:
    mean, std = _stats(values)
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="recipes/dhnm-demo.yaml")
    p.add_argument("--seeds", type=int, default=3, help="seeds 42, 43, ... (default: %(default)s)")
    p.add_argument("--output", default="runs/dhnm-compare")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    out = Path(args.output)
    start = time.perf_counter()
    seeds = [42 + i for i in range(args.seeds)]
    base_recipe = load_recipe(args.recipe, args.set)
    stage = list(base_recipe.stages)[-1]
    prepare_data(base_recipe)

    runs = {}
    for seed in seeds:
        for mode in MODES:
            label = f"{mode}-seed{seed}"
            recipe = load_recipe(args.recipe, [*args.set, f"seed={seed}", f"stages.{stage}.mining.mode={mode}",
                                               f"output_dir={out / label}"])
            print(f"[dhnm_vs_static] {label}", flush=True)
            run_recipe(recipe, resume=True, evaluate=False, show_progress=not args.quiet)
            scores = evaluate_model(stage, stage_paths(recipe, stage).model, recipe, out / label, resume=True)
            summary = json.loads(stage_paths(recipe, stage).summary.read_text())
            log = stage_paths(recipe, stage).log
            runs[label] = {"mode": mode, "seed": seed, "scores": next(iter(scores.values()))["categories"],
                           "mining": summary.get("mining"), "train_seconds": summary["train_seconds"],
                           "steps": read_log(log), "checks": read_log(log, "dhnm")}
    base = next(iter(evaluate_model("base", init_model_path(base_recipe, stage), base_recipe, out, resume=True).values()))

    categories = [c for c in ("Retrieval", "Reranking") if c in base["categories"]] or list(base["categories"])
    by_mode = {m: {c: [r["scores"][c] for r in runs.values() if r["mode"] == m] for c in categories} for m in MODES}
    plot_hard_negative_scores({f"{m} (seed {seeds[0]})": runs[f"{m}-seed{seeds[0]}"] for m in MODES},
                              out / "negatives.png", f"{base_recipe.name}: static vs dynamic hard negatives")
    command = "python benchmarks/dhnm_vs_static.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"# Static vs dynamic hard negatives: {base_recipe.name}", "", base_recipe.description.strip(), "",
             f"`{command.strip()}`: seeds {', '.join(map(str, seeds))}; scores ×100, mean ± sample std over seeds.",
             "", "| negatives | " + " | ".join(categories) + " |", "|---|" + "---|" * len(categories),
             "| base (no fine-tuning) | " + " | ".join(f"{100 * base['categories'][c]:.2f}" for c in categories) + " |"]
    lines += [f"| {m} | " + " | ".join(_fmt(by_mode[m][c]) for c in categories) + " |" for m in MODES]
    diffs = {c: [runs[f"dynamic-seed{s}"]["scores"][c] - runs[f"static-seed{s}"]["scores"][c] for s in seeds]
             for c in categories}
    lines += ["| dynamic − static (paired by seed) | " + " | ".join(_fmt(diffs[c]) for c in categories) + " |", "",
              "| run | " + " | ".join(categories) + " | sets replaced | rows out of candidates | train time |",
              "|---|" + "---|" * (len(categories) + 3)]
    for label, r in runs.items():
        mined = (r["mining"] or {}).values()
        replaced = sum(m["replaced"] for m in mined) if r["mining"] else "–"
        out_of = sum(m["rows_out_of_candidates"] for m in mined) if r["mining"] else "–"
        lines.append(f"| {label} | " + " | ".join(f"{100 * r['scores'][c]:.2f}" for c in categories)
                     + f" | {replaced} | {out_of} | {r['train_seconds'] / 60:.1f} min |")
    lines += ["", "Checks of the first dynamic run (sets checked / exhausted / replaced, mean S_initial -> S_now):", ""]
    for c in runs[f"dynamic-seed{seeds[0]}"]["checks"]:
        lines.append(f"- step {c['step']}: {c['checked']} / {c['exhausted']} / {c['replaced']}, "
                     f"{c['s_initial']} -> {c['s_now']} (positive {c['positive']}); new sets start at {c['s_initial_new']}")
    lines += ["", "Figure 3 (first seed): `negatives.png`.", ""]
    write_text_atomic(out / "report.md", "\n".join(lines))
    write_json(out / "results.json", {"recipe": args.recipe, "overrides": args.set, "seeds": seeds, "base": base["categories"],
                                      "runs": {k: {x: v[x] for x in ("mode", "seed", "scores", "mining", "train_seconds")}
                                               for k, v in runs.items()}})
    print("\n".join(lines))
    means = {m: {c: _stats(by_mode[m][c])[0] for c in categories} for m in MODES}
    fields = " ".join(f"{c.lower()}_{m}={means[m][c]:.4f}" for c in categories for m in MODES)
    ratio = means["dynamic"][categories[0]] / means["static"][categories[0]]
    print(f"RESULT dhnm_vs_static seeds={len(seeds)} {fields} minutes={(time.perf_counter() - start) / 60:.1f} "
          f"ratio={ratio:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

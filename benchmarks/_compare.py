"""Shared by the A-vs-B training benchmarks (dhnm_vs_static.py, cbb_vs_sequential.py): one recipe, arms
that differ only in a few overrides, the same data and seeds; runs alternate arms so machine-load
drifts hit both, each trained model is scored with the recipe's `eval` settings and the base once."""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

from conan_embed.evaluation.forgetting import column_value as value
from conan_embed.evaluation.forgetting import score_columns as columns_of
from conan_embed.files import write_json, write_text_atomic
from conan_embed.recipe.ablation import mean_std
from conan_embed.recipe.recipe_steps import evaluate_model, prepare_data
from conan_embed.recipe.runner import run_recipe
from conan_embed.recipe.schema import load_recipe
from conan_embed.recipe.stage_training import init_model_path, stage_paths
from conan_embed.training.callbacks import read_log


def parse_args(doc: str, recipe: str, output: str, argv=None, extra=()):
    """(arguments, seeds 42, 43, ..., the recipe as overridden); `args.output` is a Path. `extra`: (flag,
    help) of further switches, or (flag, help, add_argument's keywords) of further options."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, text, *options in extra:
        p.add_argument(flag, help=text, **(options[0] if options else {"action": "store_true"}))
    p.add_argument("--recipe", default=recipe)
    p.add_argument("--seeds", type=int, default=3, help="seeds 42, 43, ... (default: %(default)s)")
    p.add_argument("--output", default=output)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    args.output = Path(args.output)
    return args, [42 + i for i in range(args.seeds)], load_recipe(args.recipe, args.set)


def write_outputs(out: Path, lines: list[str], args: argparse.Namespace, seeds: list[int], base: dict,
                  runs: dict) -> None:
    """report.md (the lines, also printed) and results.json (every run's scores and stage summary)."""
    write_text_atomic(out / "report.md", "\n".join(lines))
    write_json(out / "results.json", {"recipe": args.recipe, "overrides": args.set, "seeds": seeds, "base": base,
                                      "runs": {k: {x: v[x] for x in ("mode", "seed", "scores", "summary")}
                                               for k, v in runs.items()}})
    print("\n".join(lines))


def run_arms(recipe_path: str, arms: dict[str, list[str]], *, seeds: list[int], output: Path, overrides: list[str],
             show_progress: bool) -> tuple[dict, dict, str]:
    """({label: run}, base scores, stage name): every arm at every seed (label `<arm>-seed<seed>`).
    A run holds its mode, seed, category scores, stage summary and log lines. Finished runs and
    evaluations are reused."""
    base_recipe = load_recipe(recipe_path, overrides)
    stage = list(base_recipe.stages)[-1]
    prepare_data(base_recipe)
    runs = {}
    for seed in seeds:
        for arm, arm_overrides in arms.items():
            label = f"{arm}-seed{seed}"
            recipe = load_recipe(recipe_path, [*overrides, *arm_overrides, f"seed={seed}",
                                               f"output_dir={output / label}"])
            print(f"[{output.name}] {label}", flush=True)
            # the recipe's steps, scoring the last stage's model alone (eval/<stage>/ in the arm's folder)
            recipe = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, models=[stage]))
            metrics = run_recipe(recipe, resume=True, show_progress=show_progress)
            summary = json.loads(stage_paths(recipe, stage).summary.read_text())
            log = stage_paths(recipe, stage).log
            runs[label] = {"mode": arm, "seed": seed, "scores": next(iter(metrics["eval"][stage].values())),
                           "summary": {k: v for k, v in summary.items() if k != "fingerprint"},
                           "steps": read_log(log), "checks": read_log(log, "dhnm")}
    base = next(iter(evaluate_model("base", init_model_path(base_recipe, stage), base_recipe, output,
                                    resume=True).values()))
    return runs, base, stage


def _fmt(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def arm_mean(runs: dict, arm: str, seeds: list[int], column: str) -> float:
    return statistics.mean(value(runs[f"{arm}-seed{s}"]["scores"], column) for s in seeds)


def score_table(runs: dict, base: dict, arms: list[str], seeds: list[int], columns: list[str]) -> list[str]:
    """Markdown: the base, each arm's mean ± sample std over seeds, and each later arm's paired
    difference from the first, per column (a category or "Avg")."""
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns),
             "| base (no fine-tuning) | " + " | ".join(f"{100 * value(base, c):.2f}" for c in columns) + " |"]
    for arm in arms:
        lines.append(f"| {arm} | " + " | ".join(
            _fmt([value(runs[f"{arm}-seed{s}"]["scores"], c) for s in seeds]) for c in columns) + " |")
    first = arms[0]
    for arm in arms[1:]:
        lines.append(f"| {arm} − {first} (paired by seed) | " + " | ".join(
            _fmt([value(runs[f"{arm}-seed{s}"]["scores"], c) - value(runs[f"{first}-seed{s}"]["scores"], c)
                  for s in seeds]) for c in columns) + " |")
    return lines

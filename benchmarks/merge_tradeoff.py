"""How much of the fine-tuned model to keep in the merge (issue 12, docs/forgetting.md).

For one recipe with a `merge:` of the last stage and its ancestors, at every seed: train the run (reused
when done), merge its models at each entry of `--weights` (`a`: the fine-tuned model at a, the base at
1 - a; `a/b/c`: one weight per model of the recipe's `merge.models`, in order), and score every merge,
the base and the run's own merge on the **validation** split (`eval.split=valid`) at the recipe's dims. The chosen weight is the largest one at which, at every dim,
the mean over the grid seeds of no category is below the base (less `--category-tolerance` points) and
of no guard task more than 1 point below it: one seed's clustering or classifier fit moves a category
by more than the margins the rule asks about. When no weight keeps them all, the chosen one is the weight
that misses by least (its worst row's shortfall). Then the chosen merge of each seed is scored once on
the **test** split: mean ± std over seeds, against the base.

    python benchmarks/merge_tradeoff.py --recipe recipes/quickstart.yaml --seeds 3 --grid-seeds 3 \\
        --weights 0.5/0.25/0.25,0.5/0.15/0.35,0.5/0/0.5 --output runs/merge-tradeoff

Prints the validation table (one row per weight, mean over the grid seeds, changes against the base),
the test table and `RESULT merge_tradeoff chosen=<weights> ...`. The grid runs on the first `--grid-seeds`
seeds (default 1).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _compare import columns_of, mean_std, parse_args, value  # noqa: E402

from conan_embed.evaluation.forgetting import TOLERANCE  # noqa: E402
from conan_embed.files import write_json, write_text_atomic  # noqa: E402
from conan_embed.merging import merge_models  # noqa: E402
from conan_embed.model_loading import resolve_model  # noqa: E402
from conan_embed.recipe.recipe_steps import evaluate_model, prepare_data  # noqa: E402
from conan_embed.recipe.runner import run_recipe  # noqa: E402
from conan_embed.recipe.schema import load_recipe  # noqa: E402
from conan_embed.recipe.stage_training import stage_paths  # noqa: E402


def shortfall(base: dict, models: dict | list[dict], category_tolerance: float = 0.0) -> float:
    """How far the mean over `models` (one result or several seeds' results) misses the rule at its worst
    row: every category at least the base's (less `category_tolerance`), every guard task within 1
    point. 0 when it keeps them all."""
    model = mean_result(models, columns_of(base)) if isinstance(models, list) else models
    return max([0.0] + [value(base, c) - (TOLERANCE if c.startswith("guard: ") else category_tolerance) - value(model, c)
                        for c in columns_of(base) if c != "Avg"])


def acceptable(base: dict, models: dict | list[dict], category_tolerance: float = 0.0) -> bool:
    return shortfall(base, models, category_tolerance) <= 0


def mean_result(results: list[dict], columns: list[str]) -> dict:
    """Seeds' results as one result of their means (what `value` reads), for the table."""
    return {"avg": statistics.mean(value(r, "Avg") for r in results),
            "categories": {c: statistics.mean(value(r, c) for r in results) for c in columns
                           if c != "Avg" and not c.startswith("guard: ")},
            "guard": {c[len("guard: "):]: statistics.mean(value(r, c) for r in results)
                      for c in columns if c.startswith("guard: ")}}


def parse_weights(spec: str, models: list[str]) -> list[tuple[float, ...]]:
    """`--weights` as weight vectors over the recipe's merge models, largest fine-tuned share first: an
    entry `a/b/c` gives one weight per model; a bare `a` is the fine-tuned model at a and the base
    ("model") at 1 - a, the others at 0."""
    vectors = set()
    for entry in spec.split(","):
        parts = [float(x) for x in entry.split("/")]
        if len(parts) == 1:
            if "model" not in models:
                raise SystemExit(f"--weights {entry}: a bare share needs the base ('model') among the merge's "
                                 f"models {models}; give one weight per model as a/b/...")
            parts = [parts[0] if i == 0 else (1 - parts[0] if name == "model" else 0.0)
                     for i, name in enumerate(models)]
        if len(parts) != len(models) or abs(sum(parts) - 1) > 1e-6 or min(parts) < 0:
            raise SystemExit(f"--weights {entry}: give {len(models)} non-negative weights summing to 1, one per "
                             f"merge model {models}")
        vectors.add(tuple(round(x, 6) for x in parts))
    return sorted(vectors, reverse=True)


def label(weights: tuple[float, ...]) -> str:
    return "/".join(f"{w:g}" for w in weights)


def merged_at(weights: tuple[float, ...], paths: list[Path], names: list[str], folder: Path) -> Path:
    """The merge of `paths` at `weights` (kept when already written); a model at weight 1 is itself."""
    used = [(w, p, n) for w, p, n in zip(weights, paths, names) if w > 0]
    if len(used) == 1:
        return used[0][1]
    out = folder / f"merge-{label(weights).replace('/', '_')}"
    if not (out / "merge.json").is_file():
        merge_models([p for _, p, _ in used], out, weights=[w for w, _, _ in used], names=[n for _, _, n in used],
                     show_progress=False)
    return out


def delta_row(label: str, base: dict, scores: dict, columns: list[str]) -> str:
    cells = [f"{100 * value(scores, c):.2f} ({100 * (value(scores, c) - value(base, c)):+.2f})" for c in columns]
    return f"| {label} | " + " | ".join(cells) + " |"


def main(argv=None) -> None:
    args, seeds, recipe = parse_args(__doc__, "recipes/quickstart.yaml", "runs/merge-tradeoff", argv, extra=(
        ("--weights", "the fine-tuned model's shares to try, or a/b/... for one weight per merge model "
         "(default: %(default)s)",
         {"default": "1,0.7,0.6,0.5,0.4,0.3"}),
        ("--grid-seeds", "seeds the grid runs on (default: %(default)s)", {"type": int, "default": 1}),
        ("--no-test", "choose on the validation split and stop: no test scores", {"action": "store_true"}),
        ("--category-tolerance", "points a category may fall below the base and still count as kept: the "
         "noise of a paired difference (default: %(default)s)", {"type": float, "default": 0.0})))
    tol = args.category_tolerance / 100
    weights = parse_weights(args.weights, recipe.merge.models)
    prepare_data(recipe)
    base_path = Path(resolve_model(recipe.model.base).location)
    runs = {}
    for seed in seeds:
        run = load_recipe(args.recipe, [*args.set, f"seed={seed}", f"output_dir={args.output / f'seed{seed}'}"])
        print(f"[merge_tradeoff] seed {seed}: training (reused when done)", flush=True)
        run_recipe(run, resume=True, evaluate=False, show_progress=not args.quiet)
        merged = Path(run.output_dir) / "merged"
        given = json.loads((merged / "merge.json").read_text())["weights"]
        runs[seed] = {"paths": [base_path if n == "model" else stage_paths(run, n).model for n in recipe.merge.models],
                      "merged": merged, "grid": merged.parent / "grid",
                      "auto_weight": tuple(round(given[n], 6) for n in recipe.merge.models)}
    names = recipe.merge.models

    def scores(label: str, path: Path, seed: int, split: str) -> dict:
        run = load_recipe(args.recipe, [*args.set, f"seed={seed}", f"output_dir={args.output / f'seed{seed}'}",
                                        f"eval.split={split}"])
        return evaluate_model(label, path, run, args.output / f"seed{seed}" / split, resume=True)

    valid_base = scores("base", base_path, seeds[0], "valid")
    grid = {}
    for seed in seeds[: args.grid_seeds]:
        r = runs[seed]
        for w in weights:
            print(f"[merge_tradeoff] seed {seed}: weights {label(w)} ({'/'.join(names)}) on the validation split",
                  flush=True)
            grid[(seed, w)] = scores(f"w{label(w)}".replace("/", "_"), merged_at(w, r["paths"], names, r["grid"]),
                                     seed, "valid")
        # the run's own merge: one of the grid's when the recipe gives its weights
        grid[(seed, "auto")] = grid.get((seed, r["auto_weight"])) or scores("merged", r["merged"], seed, "valid")
    grid_seeds = seeds[: args.grid_seeds]
    misses = {w: max(shortfall(valid_base[d], [grid[(s, w)][d] for s in grid_seeds], tol) for d in valid_base)
              for w in weights}
    ok = [w for w in weights if misses[w] <= 0]
    # none acceptable: the weight that misses by least (the larger one on a tie)
    chosen = max(ok) if ok else min(weights, key=lambda w: (round(misses[w], 6), weights.index(w)))
    dims = list(valid_base)
    columns = columns_of(valid_base[dims[0]])
    lines = [f"# Merge weight vs forgetting: `{args.recipe}`", "",
             f"Command: `python benchmarks/merge_tradeoff.py --recipe {args.recipe} --seeds {len(seeds)} "
             f"--weights {args.weights} --grid-seeds {args.grid_seeds} --category-tolerance {args.category_tolerance:g}"
             + " --no-test" * args.no_test + "".join(f" --set {s}" for s in args.set) + "`", ""]
    for d in dims:
        lines += [f"## Validation split, dim {d or 'full'} (mean over seeds {grid_seeds}; change against the base)", "",
                  f"| weights ({'/'.join(names)}) | " + " | ".join(columns) + " | every category ≥ base | acceptable |",
                  "|---|" + "---|" * (len(columns) + 2),
                  "| base | " + " | ".join(f"{100 * value(valid_base[d], c):.2f}" for c in columns) + " | | |"]
        given = all(runs[s]["auto_weight"] in weights for s in grid_seeds)  # the recipe's merge is in the grid
        auto = ", ".join(label(runs[s]["auto_weight"]) for s in grid_seeds)
        for w in weights + ([] if given else ["auto"]):
            result = mean_result([grid[(s, w)][d] for s in grid_seeds], columns)
            row = label(w) if w != "auto" else f"few-shot ({auto})"
            lines.append(delta_row(row, valid_base[d], result, columns)
                         + f" {'yes' if acceptable(valid_base[d], result) else 'no'} |"
                         + f" {'yes' if acceptable(valid_base[d], result, tol) else 'no'} |")
        lines.append("")
    why = ("the largest acceptable at every dim" if ok else "none is acceptable at every dim, so the one that "
           f"misses by least: {100 * misses[chosen]:.2f} points at its worst row")
    lines += [f"Acceptable: every category at least the base's less {args.category_tolerance:g} points, every "
              f"guard task within 1 point. Chosen: weights **{label(chosen)}** ({why}).", ""]

    results = {"recipe": args.recipe, "overrides": args.set, "seeds": seeds, "models": names, "weights": weights,
               "chosen": chosen, "valid": {"base": valid_base, "grid": {f"{s}:{label(w) if w != 'auto' else w}": v for (s, w), v in grid.items()}}}
    if args.no_test:
        lines.append(f"RESULT merge_tradeoff chosen={label(chosen)} acceptable={','.join(map(label, ok)) or 'none'}"
                     " (validation only)")
    else:
        lines += test_section(scores, chosen, runs, names, base_path, seeds, dims, columns, tol, results)
    write_text_atomic(args.output / "report.md", "\n".join(lines))
    write_json(args.output / "results.json", results)
    print("\n".join(lines))


def test_section(scores, chosen: tuple, runs: dict, names: list[str], base_path: Path, seeds: list[int], dims: list, columns: list[str],
                 tol: float, results: dict) -> list[str]:
    """The chosen merge of each seed scored once on the test split (mean ± std over seeds); adds them to
    `results`."""
    test_base = scores("base", base_path, seeds[0], "test")
    tests = {s: scores(f"w{label(chosen)}".replace("/", "_"), merged_at(chosen, runs[s]["paths"], names, runs[s]["grid"]),
                       s, "test") for s in seeds}
    lines = []
    for d in dims:
        lines += [f"## Test split, dim {d or 'full'}: weights {label(chosen)}, seeds {seeds}", "",
                  "| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns),
                  "| base | " + " | ".join(f"{100 * value(test_base[d], c):.2f}" for c in columns) + " |"]
        cells = []
        for c in columns:
            m, sd = mean_std([value(tests[s][d], c) for s in seeds])
            dm, dsd = mean_std([value(tests[s][d], c) - value(test_base[d], c) for s in seeds])
            cells.append(f"{100 * m:.2f} ± {100 * sd:.2f} ({100 * dm:+.2f} ± {100 * dsd:.2f})")
        lines += [f"| merged ({label(chosen)}) | " + " | ".join(cells) + " |", ""]
    passed = sum(acceptable(test_base[d], tests[s][d]) for s in seeds for d in dims)
    kept = sum(acceptable(test_base[d], tests[s][d], tol) for s in seeds for d in dims)
    lines.append(f"RESULT merge_tradeoff chosen={label(chosen)} auto_weights="
                 + ",".join(label(runs[s]["auto_weight"]) for s in seeds)
                 + f" test_strict={passed}/{len(seeds) * len(dims)} test_acceptable={kept}/{len(seeds) * len(dims)}"
                 " (seed x dim)")
    results["test"] = {"base": test_base, "chosen": {str(s): v for s, v in tests.items()}}
    return lines

if __name__ == "__main__":
    main()

"""What pre-training costs the general-domain guard tasks, per pre-training setting (issue 12,
docs/forgetting.md): for each variant of a recipe's pretrain stage (curation and stage overrides), curate
and pre-train at one seed (reused when done), then score the pre-trained model on the **validation**
split's Retrieval and guard tasks at the full dim and 256, against the base.

    python benchmarks/pretrain_mix.py --output runs/var \\
        --variant proportional= --variant lr2e-5=stages.pretrain.optim.lr=2e-5 \\
        --variant equal=curate.stages.sample.shares=equal
    python benchmarks/pretrain_mix.py --recipe TINY.yaml --output OUT --variant equal= --size tiny   # smoke run

Each variant gets its own data dir (a different curation) under OUTPUT/<name>. Prints one row per model
and `RESULT pretrain_mix <name>=<headline guard change at full dim> ...`. `--size tiny` (smoke runs: a tiny
recipe, seconds) scores the suite's tiny size, a few dozen items per task, instead of the quick one.
"""

from __future__ import annotations

import argparse

from conan_embed.evaluation import run_suite
from conan_embed.model_loading import resolve_model
from conan_embed.model_loading import load_embedder
from conan_embed.recipe.recipe_steps import CurateStep, DataStep, TrainStageStep
from conan_embed.recipe.schema import load_recipe
from conan_embed.recipe.stage_training import stage_paths
from conan_embed.recipe.steps import StepRunner

DIMS = (None, 256)


def scores(path: str, size: str = "quick") -> dict:
    model, cache, out = load_embedder(path), {}, {}
    for dim in DIMS:
        r = run_suite(model, size=size, dim=dim, tasks="Retrieval", guard=True, split="valid", precision="bf16",
                      embedding_cache=cache)
        out[dim] = {"Retrieval": r["categories"]["Retrieval"],
                    **{name: e["main_score"] for name, e in r["guard"].items()}}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/quickstart.yaml")
    ap.add_argument("--output", default="runs/var")
    ap.add_argument("--size", default="quick", choices=("quick", "tiny"), help="suite size (default: %(default)s)")
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                    help="a name and its recipe overrides (comma-separated; empty for the recipe as it is)")
    args = ap.parse_args(argv)
    recipe = load_recipe(args.recipe, [])
    results = {"base": scores(resolve_model(recipe.model.base).location, args.size)}
    for spec in args.variant:
        name, _, sets = spec.partition("=")
        run = load_recipe(args.recipe, [f"output_dir={args.output}/{name}", f"data.dir={args.output}/{name}/data",
                                        *[s for s in sets.split(",") if s]])
        StepRunner(run.output_dir, resume=True, show_progress=False).run(
            [DataStep(run), *([CurateStep(run, overwrite=False)] if run.curate else []), TrainStageStep(run, "pretrain")])
        results[name] = scores(str(stage_paths(run, "pretrain").model), args.size)
    columns = list(results["base"][None])
    print("| model | " + " | ".join(f"{c} ({d or 'full'})" for d in DIMS for c in columns) + " |")
    print("|---|" + "---|" * (len(columns) * len(DIMS)))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{100 * r[d][c]:.2f}" for d in DIMS for c in columns) + " |")
    guard = "PeoplesDailyTitleRetrieval"
    print("RESULT pretrain_mix " + " ".join(f"{n}={100 * (r[None][guard] - results['base'][None][guard]):+.2f}"
                                            for n, r in results.items() if n != "base"))


if __name__ == "__main__":
    main()

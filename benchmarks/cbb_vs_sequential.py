"""Sequential tasks vs cross-GPU batch balance: the same recipe, data, examples and seeds.

    .venv/bin/python benchmarks/cbb_vs_sequential.py --seeds 3
    .venv/bin/python benchmarks/cbb_vs_sequential.py --recipe recipes/cbb-demo.yaml --seeds 3 --same-steps

The recipe's last stage is trained with its CBB composer, and with `composer: sequential` for as many
steps times its number of tasks (a sequential step trains one task, a CBB step every task: both see the
same batches), alternating per seed. `--same-steps` adds CBB for as many optimizer steps as sequential
(three times the batches): with Adam, each step moves the weights about as far whatever its batch, so
"same batches" gives CBB a third of the updates. Each model, plus the base once, is scored with the recipe's `eval`
settings (cbb-demo: the whole quick suite). Writes into --output: report.md (per category and Avg, mean ±
sample std over seeds), loss.png (the paper's Figure 5 for the first seed: the loss of each schedule
against the share of the run done), results.json, one run folder per arm and seed. Resumable.

Last line: RESULT cbb_vs_sequential ... [ratio_same_steps=...] ratio=<cbb / sequential Avg, means over seeds>.
"""

from __future__ import annotations

import statistics
import sys
import time

from _compare import arm_mean, columns_of, parse_args, run_arms, score_table, write_outputs

from conan_embed.training.plots import plot_schedule_losses


def main(argv=None) -> int:
    start = time.perf_counter()
    args, seeds, recipe = parse_args(__doc__, "recipes/cbb-demo.yaml", "runs/cbb-compare", argv,
                                     extra=[("--same-steps", "also CBB with as many optimizer steps as sequential")])
    out = args.output
    stage_name = list(recipe.stages)[-1]
    stage = recipe.stages[stage_name]
    steps = stage.max_steps * len(stage.tasks)
    arms = {"sequential": [f"stages.{stage_name}.composer=sequential", f"stages.{stage_name}.max_steps={steps}"],
            "cbb": []}
    if args.same_steps:
        arms["cbb-same-steps"] = [f"stages.{stage_name}.max_steps={steps}"]
    names = list(arms)
    runs, base, _ = run_arms(args.recipe, arms, seeds=seeds, output=out, overrides=args.set,
                             show_progress=not args.quiet)

    columns = columns_of(base)
    tasks = list(stage.tasks)
    plot_schedule_losses({a: runs[f"{a}-seed{seeds[0]}"]["steps"] for a in names}, out / "loss.png",
                         f"{recipe.name}: sequential tasks vs cross-GPU batch balance")
    command = "python benchmarks/cbb_vs_sequential.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"# Sequential tasks vs cross-GPU batch balance: {recipe.name}", "", recipe.description.strip(), "",
             f"`{command.strip()}`: seeds {', '.join(map(str, seeds))}; sequential {stage.max_steps * len(stage.tasks)} "
             f"steps (one task each) vs CBB {stage.max_steps} steps (every task each): the same batches"
             + (f"; cbb-same-steps: CBB for {steps} steps" if args.same_steps else "") + ". Local suite, "
             "scores ×100, mean ± sample std over seeds.", "", *score_table(runs, base, names, seeds, columns), "",
             "Each task's own loss (`loss/<task>`, before β) over the second half of each run: mean (sd over its "
             "steps). A sequential step's combined loss is one task's, so it jumps between the tasks' scales; a "
             "CBB step's is the sum Σ InfoNCE + β·CoSENT. Figure 5 (first seed): `loss.png`.", "",
             "| run | " + " | ".join(tasks) + " | train time |", "|---|" + "---|" * (len(tasks) + 1)]
    for label, r in runs.items():
        cells = []
        for task in tasks:
            values = [x[f"loss/{task}"] for x in r["steps"] if x.get(f"loss/{task}") is not None]
            half = values[len(values) // 2:]
            cells.append(f"{statistics.mean(half):.3f} ({statistics.stdev(half) if len(half) > 1 else 0.0:.3f})")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {r['summary']['train_seconds'] / 60:.1f} min |")
    lines.append("")
    write_outputs(out, lines, args, seeds, base, runs)
    means = {a: {c: arm_mean(runs, a, seeds, c) for c in columns} for a in names}
    fields = " ".join(f"{c.lower()}_{a.replace('-', '_')}={means[a][c]:.4f}" for c in ("Retrieval", "Avg") for a in names)
    print(f"RESULT cbb_vs_sequential seeds={len(seeds)} {fields} minutes={(time.perf_counter() - start) / 60:.1f} "
          + (f"ratio_same_steps={means['cbb-same-steps']['Avg'] / means['sequential']['Avg']:.4f} "
             if args.same_steps else "") + f"ratio={means['cbb']['Avg'] / means['sequential']['Avg']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

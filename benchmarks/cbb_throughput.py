"""What cross-GPU batch balance costs per example: the same batches trained one task per step
(sequential) and every task per step (CBB), in one process, alternating, repeated.

    .venv/bin/python benchmarks/cbb_throughput.py                      # recipes/cbb-demo.yaml, e5-small
    .venv/bin/python benchmarks/cbb_throughput.py --steps 10 --repeats 3

CBB runs `--steps` steps of the recipe's last stage; sequential runs steps x tasks, so both train the
same batches. Time per example = the run's wall time from the end of its first step (model loading and
warm-up left out) to its end, over the examples trained after step 1 (queries and STS pairs).

Last line: RESULT cbb_throughput ... ratio=<sequential / CBB time per example, median over repeats>.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from conan_embed.recipe.recipe_steps import prepare_data
from conan_embed.recipe.schema import load_recipe
from conan_embed.recipe.stage_training import stage_paths, train_stage
from conan_embed.training.callbacks import StepRecordCallback, read_log


class CountExamples(StepRecordCallback):
    def __init__(self):
        self.per_step = []

    def on_step_records(self, args, state, records):
        self.per_step.append(sum(r.size for r in records))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="recipes/cbb-demo.yaml")
    p.add_argument("--steps", type=int, default=10, help="CBB steps per run (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (repeatable)")
    p.add_argument("--output", default="runs/cbb-throughput")
    args = p.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(args.recipe, args.set)
    stage = list(recipe.stages)[-1]
    n_tasks = len(recipe.stages[stage].tasks)
    prepare_data(recipe)
    arms = {"sequential": [f"stages.{stage}.composer=sequential", f"stages.{stage}.max_steps={args.steps * n_tasks}"],
            "cbb": [f"stages.{stage}.max_steps={args.steps}"]}
    per_example = {arm: [] for arm in arms}
    for repeat in range(args.repeats):
        for arm, overrides in arms.items():
            with tempfile.TemporaryDirectory(dir=out) as tmp:
                run = load_recipe(args.recipe, [*args.set, *overrides, f"output_dir={tmp}",
                                                f"stages.{stage}.checkpoint.every=100000"])
                counter = CountExamples()
                train_stage(run, stage, show_progress=False, callbacks=[counter])
                log = read_log(stage_paths(run, stage).log)
            # a sequential run's first step trains one task: skip one CBB step's worth of its steps
            skip = n_tasks if arm == "sequential" else 1
            seconds = log[-1]["elapsed_s"] - log[skip - 1]["elapsed_s"]
            examples = sum(counter.per_step[skip:])
            per_example[arm].append(seconds / examples)
            print(f"[cbb_throughput] repeat {repeat + 1} {arm:<10} {examples} examples in {seconds:.1f} s: "
                  f"{1000 * seconds / examples:.1f} ms per example", flush=True)
    ratios = [s / c for s, c in zip(per_example["sequential"], per_example["cbb"])]
    med = {arm: statistics.median(v) for arm, v in per_example.items()}
    print(f"per-repeat ratios (sequential / CBB time per example): {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"RESULT cbb_throughput recipe={Path(args.recipe).name} cbb_steps={args.steps} repeats={args.repeats} "
          f"sequential_ms_per_example={1000 * med['sequential']:.1f} cbb_ms_per_example={1000 * med['cbb']:.1f} "
          f"ratio={statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

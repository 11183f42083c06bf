"""The pruned-vocabulary e5-small against the full-vocabulary one on the local suite, in one run.

Pruning must not change a score (docs/assets.md says why it is exact). It speeds training (a
tenth of the embedding parameters in the optimizer), not encoding: the time ratio should be ~1. Prints both tables, the largest per-task difference, and the suite-time ratio.

    .venv/bin/python benchmarks/pruned_vs_full_eval.py [--size quick|full] [--output runs/bench-pruning]
    .venv/bin/python benchmarks/pruned_vs_full_eval.py --size tiny --models PRUNED_DIR,FULL_DIR   # smoke run

`--models` names the pruned and the full model (shipped names or folders; default e5-small,e5-small-full);
`--size tiny` (a few dozen items per task) is for smoke runs with tiny models.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="quick", choices=("quick", "full", "tiny"))
    parser.add_argument("--models", default="e5-small,e5-small-full", help="pruned,full (default: %(default)s)")
    parser.add_argument("--output", default="runs/bench-pruning")
    args = parser.parse_args()
    names = args.models.split(",")
    if len(names) != 2:
        parser.error(f"--models takes two models, pruned,full; got {args.models!r}")

    from conan_embed.evaluation import format_table, run_suite

    # warm-up: the first suite in a process also pays for imports and building the task data
    run_suite(names[0], size="tiny", show_progress=False)
    results = {}
    for name in names:
        results[name] = run_suite(name, size=args.size, output_dir=Path(args.output) / Path(name).name)
        print(format_table(results[name]))
    pruned, full = (results[name] for name in names)
    diffs = {t: abs(pruned["tasks"][t]["main_score"] - full["tasks"][t]["main_score"]) for t in pruned["tasks"]}
    for task, diff in diffs.items():
        print(f"{task:<32} pruned {pruned['tasks'][task]['main_score']:.4f}  full "
              f"{full['tasks'][task]['main_score']:.4f}  |diff| {diff:.5f}")
    ratio = full["seconds"] / pruned["seconds"]
    print(f"RESULT pruned_vs_full_eval size={args.size} avg_pruned={pruned['avg']:.4f} avg_full={full['avg']:.4f} "
          f"max_task_diff={max(diffs.values()):.5f} seconds_pruned={pruned['seconds']:.0f} "
          f"seconds_full={full['seconds']:.0f} ratio={ratio:.2f}")


if __name__ == "__main__":
    main()

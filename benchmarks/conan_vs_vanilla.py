"""The headline comparison: vanilla fine-tuning (tasks in turn, static hard negatives) against the Conan
fine-tune (cross-GPU batch balance + dynamic hard negatives with the recommended rule), over >= 5 seeds.

    .venv/bin/python benchmarks/conan_vs_vanilla.py                       # ablation-cpu, seeds 42-46
    .venv/bin/python benchmarks/conan_vs_vanilla.py --seeds 8 --set eval.split=valid

It is `conan-embed ablation <recipe> --rows "vanilla,CBB + DHNM" --seeds N` (one pre-training, then both rows
at every seed from it, the same data and steps; finished work is reused, so `make reproduce`'s runs count
when --output is its folder), and it reports the paired difference seed by seed: with 5 seeds a 95 %
t-interval is about 1.2 standard deviations of the per-seed difference wide on each side, against 2.5 with 3.
Writes ablation.md / ablation.json / ablation.png into --output.

Last line: RESULT conan_vs_vanilla seeds=N avg_vanilla=.. avg_conan=.. avg_diff=.. avg_low=.. avg_high=..
retrieval_diff=.. retrieval_low=.. retrieval_high=.. replaced_min=<fewest sets the rule replaced in a seed>
ratio=<Conan Avg / vanilla Avg>.
"""

from __future__ import annotations

import statistics
import sys
import time

from _compare import parse_args

from conan_embed.evaluation.forgetting import column_value
from conan_embed.recipe.ablation import paired_interval, row_recipe, run_ablation
from conan_embed.recipe.stage_training import read_summary, stage_paths

ROWS = ["vanilla", "CBB + DHNM"]


def main(argv=None) -> int:
    start = time.perf_counter()
    args, seeds, recipe = parse_args(__doc__, "recipes/ablation-cpu.yaml", "runs/conan-vs-vanilla", argv)
    if len(seeds) < 2:
        print("note: one seed gives no interval; the comparison asks for 5 or more", file=sys.stderr)
    result = run_ablation(recipe, args.output, seeds=seeds, rows=ROWS, show_progress=not args.quiet)
    dim = next(iter(result["scores"]["vanilla"][0]))
    vanilla, conan = ([s[dim] for s in result["scores"][row]] for row in ROWS)
    fields = {"seeds": len(seeds)}
    for column in ("Avg", "Retrieval"):
        diffs = [column_value(c, column) - column_value(v, column) for c, v in zip(conan, vanilla)]
        mean, low, high = paired_interval(diffs)
        key = column.lower()
        if column == "Avg":
            fields["avg_vanilla"] = f"{100 * statistics.mean(column_value(v, column) for v in vanilla):.2f}"
            fields["avg_conan"] = f"{100 * statistics.mean(column_value(c, column) for c in conan):.2f}"
        fields[f"{key}_diff"] = f"{100 * mean:+.2f}"
        fields[f"{key}_low"] = "nan" if low is None else f"{100 * low:+.2f}"
        fields[f"{key}_high"] = "nan" if high is None else f"{100 * high:+.2f}"
    replaced = []
    for seed in seeds:
        r = row_recipe(recipe, "CBB + DHNM", seed, args.output / "pretrained", args.output)
        mining = (read_summary(stage_paths(r, next(iter(r.stages)))) or {}).get("mining") or {}
        replaced.append(sum(m["replaced"] for m in mining.values()))
    fields["replaced_min"] = min(replaced)
    fields["minutes"] = f"{(time.perf_counter() - start) / 60:.1f}"
    fields["ratio"] = f"{float(fields['avg_conan']) / float(fields['avg_vanilla']):.4f}"
    print("RESULT conan_vs_vanilla " + " ".join(f"{k}={v}" for k, v in fields.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

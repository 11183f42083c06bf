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

import sys
import time

from _compare import arm_mean, parse_args, run_arms, score_table, write_outputs

from conan_embed.training.plots import plot_hard_negative_scores

MODES = ("static", "dynamic")


def main(argv=None) -> int:
    start = time.perf_counter()
    args, seeds, recipe = parse_args(__doc__, "recipes/dhnm-demo.yaml", "runs/dhnm-compare", argv)
    out = args.output
    stage = list(recipe.stages)[-1]
    arms = {m: [f"stages.{stage}.mining.mode={m}"] for m in MODES}
    runs, base, stage = run_arms(args.recipe, arms, seeds=seeds, output=out, overrides=args.set,
                                 show_progress=not args.quiet)

    columns = [c for c in ("Retrieval", "Reranking") if c in base["categories"]] or list(base["categories"])
    plot_hard_negative_scores({f"{m} (seed {seeds[0]})": runs[f"{m}-seed{seeds[0]}"] for m in MODES},
                              out / "negatives.png", f"{recipe.name}: static vs dynamic hard negatives")
    command = "python benchmarks/dhnm_vs_static.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"# Static vs dynamic hard negatives: {recipe.name}", "", recipe.description.strip(), "",
             f"`{command.strip()}`: seeds {', '.join(map(str, seeds))}; scores ×100, mean ± sample std over seeds.",
             "", *score_table(runs, base, list(MODES), seeds, columns), "",
             "| run | " + " | ".join(columns) + " | sets replaced | rows replaced | rows out of candidates | train time |",
             "|---|" + "---|" * (len(columns) + 4)]
    for label, r in runs.items():
        mined = list((r["summary"].get("mining") or {}).values())
        counts = [sum(m[k] for m in mined) if mined else "–" for k in ("replaced", "rows_replaced", "rows_out_of_candidates")]
        lines.append(f"| {label} | " + " | ".join(f"{100 * r['scores']['categories'][c]:.2f}" for c in columns)
                     + " | " + " | ".join(map(str, counts)) + f" | {r['summary']['train_seconds'] / 60:.1f} min |")
    lines += ["", "Checks of the first dynamic run (sets checked / exhausted / replaced, mean S_initial -> S_now):", ""]
    for c in runs[f"dynamic-seed{seeds[0]}"]["checks"]:
        lines.append(f"- step {c['step']}: {c['checked']} / {c['exhausted']} / {c['replaced']}, "
                     f"{c['s_initial']} -> {c['s_now']} (positive {c['positive']})")
    lines += ["", "Figure 3 (first seed): `negatives.png`.", ""]
    write_outputs(out, lines, args, seeds, base, runs)
    means = {m: {c: arm_mean(runs, m, seeds, c) for c in columns} for m in MODES}
    fields = " ".join(f"{c.lower()}_{m}={means[m][c]:.4f}" for c in columns for m in MODES)
    print(f"RESULT dhnm_vs_static seeds={len(seeds)} {fields} minutes={(time.perf_counter() - start) / 60:.1f} "
          f"ratio={means['dynamic'][columns[0]] / means['static'][columns[0]]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Static vs dynamic hard negatives: the same recipe, data, steps and seeds; only `mining.mode` differs.

    .venv/bin/python benchmarks/dhnm_vs_static.py --seeds 3
    .venv/bin/python benchmarks/dhnm_vs_static.py --recipe recipes/dhnm-demo.yaml --seeds 3 --set stages.finetune.max_steps=96
    .venv/bin/python benchmarks/dhnm_vs_static.py --rules paper,conan-v2,loss-weight --set eval.split=valid

--rules races the replacement rules side by side (docs/mining.md), one dynamic arm each (`dynamic-<rule>`),
against static negatives: paper (1.15 / 0.8, the recipe's check interval), conan-v2 (S0 < 0.4, or
1.2 x S_now < S0 and S_now < 0.7, checked every step) and loss-weight (ours). Without it, one dynamic
arm with the recipe's own mining settings.

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

# each rule as recipe overrides of `stages.<stage>.mining`: every key a rule reads, so none leaks from the recipe
RULES = {
    "paper": {"rule": "paper", "ratio": 1.15, "max_score": 0.8, "absolute": True, "min_initial": None},
    "conan-v2": {"rule": "paper", "ratio": 1.2, "max_score": 0.7, "absolute": False, "min_initial": 0.4,
                 "check_every": 1},
    "loss-weight": {"rule": "loss-weight", "weight_drop": 2.0, "min_initial": None},
}


def arms_for(stage: str, rules: list[str]) -> dict[str, list[str]]:
    arms = {"static": [f"stages.{stage}.mining.mode=static"]}
    if not rules:
        return {**arms, "dynamic": [f"stages.{stage}.mining.mode=dynamic"]}
    for rule in rules:
        keys = {"mode": "dynamic", **RULES[rule]}
        arms[f"dynamic-{rule}"] = [f"stages.{stage}.mining.{k}={'null' if v is None else str(v).lower()}"
                                   for k, v in keys.items()]
    return arms


def main(argv=None) -> int:
    start = time.perf_counter()
    args, seeds, recipe = parse_args(__doc__, "recipes/dhnm-demo.yaml", "runs/dhnm-compare", argv,
                                     extra=[("--rules", f"comma-separated, of {', '.join(RULES)}", {})])
    rules = [r for r in (args.rules or "").split(",") if r]
    unknown = set(rules) - set(RULES)
    if unknown:
        raise SystemExit(f"--rules: unknown {sorted(unknown)}; known: {', '.join(RULES)}")
    out = args.output
    stage = list(recipe.stages)[-1]
    arms = arms_for(stage, rules)
    modes = list(arms)
    runs, base, stage = run_arms(args.recipe, arms, seeds=seeds, output=out, overrides=args.set,
                                 show_progress=not args.quiet)

    columns = [c for c in ("Retrieval", "Reranking") if c in base["categories"]] or list(base["categories"])
    plot_hard_negative_scores({f"{m} (seed {seeds[0]})": runs[f"{m}-seed{seeds[0]}"] for m in modes},
                              out / "negatives.png", f"{recipe.name}: static vs dynamic hard negatives")
    dynamic = modes[1:]

    def replaced(label: str) -> int:
        return sum(m["replaced"] for m in runs[label]["summary"]["mining"].values())

    command = "python benchmarks/dhnm_vs_static.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"# Static vs dynamic hard negatives: {recipe.name}", "", recipe.description.strip(), "",
             f"`{command.strip()}`: seeds {', '.join(map(str, seeds))}; scores ×100, mean ± sample std over seeds.",
             "", *score_table(runs, base, list(modes), seeds, columns), "",
             "| run | " + " | ".join(columns) + " | sets replaced | rows replaced | rows out of candidates | train time |",
             "|---|" + "---|" * (len(columns) + 4)]
    for label, r in runs.items():
        mined = list((r["summary"].get("mining") or {}).values())
        counts = [sum(m[k] for m in mined) if mined else "–" for k in ("replaced", "rows_replaced", "rows_out_of_candidates")]
        lines.append(f"| {label} | " + " | ".join(f"{100 * r['scores']['categories'][c]:.2f}" for c in columns)
                     + " | " + " | ".join(map(str, counts)) + f" | {r['summary']['train_seconds'] / 60:.1f} min |")
    for arm in dynamic:
        acted = sum(replaced(f"{arm}-seed{s}") > 0 for s in seeds)
        lines += ["", f"{arm}: replaced sets in {acted} of {len(seeds)} seeds. Checks that found sets exhausted, first "
                  f"seed (step: checked / exhausted / replaced, mean S_initial -> S_now, positive):", ""]
        lines += [f"- step {c['step']}: {c['checked']} / {c['exhausted']} / {c['replaced']}, {c['s_initial']} -> "
                  f"{c['s_now']} ({c['positive']})" for c in runs[f"{arm}-seed{seeds[0]}"]["checks"] if c["exhausted"]]
    lines += ["", "Figure 3 (first seed): `negatives.png`.", ""]
    write_outputs(out, lines, args, seeds, base, runs)
    means = {m: {c: arm_mean(runs, m, seeds, c) for c in columns} for m in modes}
    fields = " ".join(f"{c.lower()}_{m}={means[m][c]:.4f}" for c in columns for m in modes)
    counts = " ".join(f"replaced_{m}={sum(replaced(f'{m}-seed{s}') for s in seeds)}" for m in dynamic)
    print(f"RESULT dhnm_vs_static seeds={len(seeds)} {fields} {counts} "
          f"minutes={(time.perf_counter() - start) / 60:.1f} "
          f"ratio={means[dynamic[0]][columns[0]] / means['static'][columns[0]]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How much of a Classification or Clustering difference against the base is the suite's own noise.

The quick suite's Classification is the mean of logistic-regression fits on 32 reviews per label, and
its Clustering the mean of k-means runs (one initialisation each) on bootstrap samples of 1,000
questions: a model and its base see the same samples, yet each fit or run lands somewhere else. This
script scores each model and the base with many fits and runs (`--experiments`, `--runs`), pairs them
(fit i of the model against fit i of the base), prints the mean difference with its standard error,
and the standard error a suite with fewer repetitions would give (mteb's and the quick size's before
2026-11-29: 5 fits, 10 runs; the quick size's now: 10 fits, 50 runs):

    .venv/bin/python benchmarks/eval_noise.py MODEL... [--base e5-small] [--split valid] \
        [--experiments 40] [--runs 100] [--output runs/eval-noise]

Scores on the validation split by default: this measures the instrument, and must not look at test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from pathlib import Path

from conan_embed.evaluation.sizes import SIZES
from conan_embed.evaluation.suite import run_suite

QUICK = SIZES["quick"]
# repetitions of the quick suite before 2026-11-29 and now: (classifier fits, k-means runs)
COUNTS = {"before": {"Classification": 5, "Clustering": 10},
          "now": {"Classification": QUICK.classification_experiments, "Clustering": QUICK.clustering_runs}}


def per_repetition(model: str, size, dims: list, split: str, out: Path) -> dict:
    """{dim: {"Classification": [accuracy of each fit], "Clustering": [V-measure of each run]}}."""
    cache, scores = {}, {}
    for dim in dims:
        folder = out / model.replace("/", "_") / f"dim-{dim or 'full'}"
        run_suite(model, size=size, dim=dim, output_dir=folder, tasks="Classification,Clustering", precision="bf16",
                  embedding_cache=cache, split=split, show_progress=False)
        cls = json.loads((folder / "mteb/SnowNLPSentimentClassification.json").read_text())["scores"]["test"][0]
        clu = json.loads((folder / "mteb/InsuranceQAClustering.json").read_text())["scores"]["test"][0]
        scores[dim] = {"Classification": [100 * e["accuracy"] for e in cls["scores_per_experiment"]],
                       "Clustering": [100 * v for v in clu["v_measures"]["Level 0"]]}
    return scores


def paired(model: list[float], base: list[float]) -> tuple[float, float]:
    """(mean difference, its standard error) over paired repetitions."""
    diffs = [m - b for m, b in zip(model, base)]
    return statistics.mean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--base", default="e5-small")
    p.add_argument("--split", default="valid", choices=("valid", "test"))
    p.add_argument("--experiments", type=int, default=40, help="classifier fits (default: %(default)s)")
    p.add_argument("--runs", type=int, default=100, help="k-means runs (default: %(default)s)")
    p.add_argument("--dims", default="full,256", help="comma-separated: full or a Matryoshka dim")
    p.add_argument("--output", default="runs/eval-noise")
    args = p.parse_args()
    size = dataclasses.replace(QUICK, classification_experiments=args.experiments, clustering_runs=args.runs)
    dims = [None if d == "full" else int(d) for d in args.dims.split(",")]
    out = Path(args.output)
    base = per_repetition(args.base, size, dims, args.split, out)
    print(f"{args.split} split; change against {args.base}, x100: mean ± standard error over the paired "
          "repetitions; then the standard error with the quick size's counts, before / now")
    ses = {when: {cat: [] for cat in counts} for when, counts in COUNTS.items()}
    for model in args.models:
        scores = per_repetition(model, size, dims, args.split, out)
        for dim in dims:
            for cat in COUNTS["now"]:
                d, se = paired(scores[dim][cat], base[dim][cat])
                n = len(scores[dim][cat])
                for when, counts in COUNTS.items():
                    ses[when][cat].append(se * math.sqrt(n / counts[cat]))
                print(f"{model} | dim {dim or 'full'} | {cat}: {d:+.2f} ± {se:.2f} ({n} paired); with "
                      + " / ".join(f"{c[cat]}: ± {ses[w][cat][-1]:.2f}" for w, c in COUNTS.items()))
    print("RESULT eval_noise standard error of a model-vs-base difference, median over models and dims: "
          + ", ".join(f"{cat} {COUNTS['before'][cat]} -> {COUNTS['now'][cat]}: "
                      f"{statistics.median(ses['before'][cat]):.2f} -> {statistics.median(ses['now'][cat]):.2f}"
                      for cat in COUNTS["now"]))


if __name__ == "__main__":
    main()

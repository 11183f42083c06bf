"""How much of a Classification or Clustering difference against the base is the suite's own noise.

The quick suite's Classification is the mean of 5 logistic-regression fits on 32 reviews per label, and
its Clustering the mean of 10 k-means runs (one initialisation each) on bootstrap samples of 1,000
questions: a model and its base see the same samples, yet each fit or run lands somewhere else. This
script scores each model and the base with many more fits and runs (`--experiments`, `--runs`), pairs
them (fit i of the model against fit i of the base) and prints the mean difference with its standard
error, beside the difference the quick suite's first 5 fits / 10 runs give:

    .venv/bin/python benchmarks/eval_noise.py MODEL... [--base e5-small] [--split valid] \
        [--experiments 40] [--runs 50] [--output runs/eval-noise]

Scores on the validation split by default: this measures the instrument, and must not look at test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from pathlib import Path

from conan_embed.evaluation import tasks as suite_tasks
from conan_embed.evaluation.sizes import SIZES
from conan_embed.evaluation.suite import run_suite

QUICK = SIZES["quick"]
QUICK_RUNS = suite_tasks.InsuranceQAClustering.n_clusters  # mteb's 10 bootstrap runs


def per_repetition(model: str, size, runs: int, dims: list, split: str, out: Path) -> dict:
    """{dim: {"Classification": [accuracy of each fit], "Clustering": [V-measure of each run]}}."""
    suite_tasks.InsuranceQAClustering.n_clusters = runs
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
    p.add_argument("--experiments", type=int, default=40, help="classifier fits (quick suite: %d)" % QUICK.classification_experiments)
    p.add_argument("--runs", type=int, default=50, help=f"k-means runs (quick suite: {QUICK_RUNS})")
    p.add_argument("--dims", default="full,256", help="comma-separated: full or a Matryoshka dim")
    p.add_argument("--output", default="runs/eval-noise")
    args = p.parse_args()
    size = dataclasses.replace(QUICK, classification_experiments=args.experiments)
    dims = [None if d == "full" else int(d) for d in args.dims.split(",")]
    out = Path(args.output)
    base = per_repetition(args.base, size, args.runs, dims, args.split, out)
    first = {"Classification": QUICK.classification_experiments, "Clustering": QUICK_RUNS}
    print(f"{args.split} split; change against {args.base}, x100: mean ± standard error over the paired "
          f"repetitions, then what the quick suite's first ones give")
    ses = []
    for model in args.models:
        scores = per_repetition(model, size, args.runs, dims, args.split, out)
        for dim in dims:
            for cat, n in first.items():
                d, se = paired(scores[dim][cat], base[dim][cat])
                quick = statistics.mean(scores[dim][cat][:n]) - statistics.mean(base[dim][cat][:n])
                ses.append((cat, se * math.sqrt(len(scores[dim][cat]) / n)))
                print(f"{model} | dim {dim or 'full'} | {cat}: {d:+.2f} ± {se:.2f} "
                      f"({len(scores[dim][cat])} paired); the quick suite's first {n}: {quick:+.2f}")
    for cat, n in first.items():
        print(f"RESULT eval_noise {cat}: standard error of the quick suite's paired difference ({n}) "
              f"≈ {statistics.median(s for c, s in ses if c == cat):.2f} points (median over models and dims)")


if __name__ == "__main__":
    main()

"""`conan-embed ablation RECIPE`: the paper's Table 3 for your model and data (docs/reproducing.md).

The recipe's stages before the last (pre-training) and its `mine:` step run once, with the recipe's seed.
The last stage is the fine-tuning the rows vary; every row, at every seed, starts from that one
pre-trained model with the same data and steps:

    vanilla               tasks in turn (sequential composer), static hard negatives
    CBB only              cross-GPU batch balance, static hard negatives
    DHNM (paper rule)     tasks in turn, dynamic hard negative mining with the paper's rule (the recipe's
                          check interval and constants)
    DHNM (loss-weight)    tasks in turn, dynamic mining with our scale-free rule (docs/mining.md)
    CBB + DHNM            both: the Conan recipe, with the recommended rule (`RECOMMENDED`)
    + false-negative filter   CBB + DHNM, replacements skipping likely false negatives (scoring above the
                              positive: `mine`'s default margin, docs/mining.md)

The pre-trained model ("pre-training only", the paper's baseline; the base model when the recipe has a
single stage) and every fine-tuned one are scored with the recipe's `eval` settings. Writes ablation.md
(rows = methods, columns = categories + Avg and the guard tasks, mean ± std over seeds, per dim),
ablation.png (bars with error bars), figure3.png and figure5.png (the paper's Figures 3 and 5 from the first
seed) and ablation.json; each row's paired difference from vanilla (seed by
seed) with a 95 % t-interval; what dynamic mining did in each dynamic row (sets replaced, stale rows,
false negatives dropped). A finished training or evaluation is reused, so
an interrupted ablation continues where it stopped. The recipe's `merge:` is not applied (the paper's
table has none).
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import time
from pathlib import Path

from conan_embed.errors import InputError
from conan_embed.evaluation.forgetting import column_value, score_columns
from conan_embed.files import write_json, write_text_atomic
from conan_embed.logs import get_logger
from conan_embed.model_loading import model_fingerprint
from conan_embed.recipe.recipe_steps import CheckDataStep, CurateStep, DataStep, EvaluateStep, MineStep, TrainStageStep
from conan_embed.recipe.runner import run_recipe
from conan_embed.recipe.schema import Recipe
from conan_embed.recipe.stage_training import init_model_path, read_summary, stage_paths
from conan_embed.recipe.steps import Step, StepRunner
from conan_embed.training.callbacks import read_log
from conan_embed.training.launch import init_from_launch, launched_rank_and_world
from conan_embed.training.training_config import ComposerConfig
from conan_embed.training.plots import plot_hard_negative_scores, plot_schedule_losses

# the rule the Conan rows use: it acts on the quickstart, where the paper's is silent (docs/mining.md); whether
# it helps is what the table measures
RECOMMENDED = {"mode": "dynamic", "rule": "loss-weight"}
# row -> (composer, mining settings laid over the recipe's)
ROWS = {
    "vanilla": ("sequential", {"mode": "static"}),
    "CBB only": ("cbb", {"mode": "static"}),
    "DHNM (paper rule)": ("sequential", {"mode": "dynamic", "rule": "paper"}),
    "DHNM (loss-weight)": ("sequential", {"mode": "dynamic", "rule": "loss-weight"}),
    "CBB + DHNM": ("cbb", RECOMMENDED),
    "+ false-negative filter": ("cbb", {**RECOMMENDED, "relative_margin": 0.0}),
}
PAPER_AVG = {"pre-training only": 62.9, "vanilla": 68.8, "CBB only": 70.4, "DHNM (paper rule)": 71.2,
             "CBB + DHNM": 72.62}


log = get_logger("ablation")


def _slug(row: str) -> str:
    """A folder name: "CBB + DHNM" -> cbb-dhnm, "DHNM (paper rule)" -> dhnm-paper-rule."""
    return re.sub(r"[^a-z0-9]+", "-", row.lower()).strip("-")


def check_rows(rows) -> list[str]:
    for row in rows:
        if row not in ROWS:
            raise InputError(f"unknown ablation row {row!r}; expected one of {', '.join(ROWS)}", field="rows")
    return list(rows)


def row_recipe(recipe: Recipe, row: str, seed: int, pretrained: Path, output: Path) -> Recipe:
    """The recipe's last stage alone, set up as `row`, from the pre-trained model, into its own folder."""
    composer, mining = ROWS[check_rows([row])[0]]
    name = list(recipe.stages)[-1]
    stage = recipe.stages[name]
    if composer == "cbb":
        composer = stage.composer if stage.composer_config.name == "cbb" else ComposerConfig(name="cbb")
    stage = dataclasses.replace(stage, init=str(pretrained), composer=composer,
                                mining=dataclasses.replace(stage.mining, **mining))
    return dataclasses.replace(recipe, stages={name: stage}, seed=seed, output_dir=str(output / f"{_slug(row)}-seed{seed}"),
                               curate=None, mine=None, merge=None)


def pretrain_once(recipe: Recipe, output: Path, *, show_progress: bool) -> tuple[Path, list[Step]]:
    """The pre-trained model the rows start from: the stages before the last (and the mine step), run once
    into output/pretrained; with no earlier stage, the data, curation and mine steps the rows need first."""
    *earlier, last = recipe.stages
    if recipe.stages[last].init not in ("model", *earlier):
        raise InputError(f"the last stage ({last!r}) must start from the base model or an earlier stage, not "
                         f"{recipe.stages[last].init!r}", path=recipe.source, field=f"stages.{last}.init")
    trimmed = dataclasses.replace(recipe, stages={n: recipe.stages[n] for n in earlier}, merge=None,
                                  output_dir=str(output / "pretrained"))
    first: list[Step] = []
    if earlier:
        run_recipe(trimmed, resume=True, evaluate=False, show_progress=show_progress)
    else:
        first = [DataStep(recipe), *([CurateStep(recipe, overwrite=False)] if recipe.curate is not None else []),
                 CheckDataStep(recipe), *([MineStep(recipe)] if recipe.mine is not None else [])]
    start = recipe.stages[last].init
    model = Path(init_model_path(recipe, last)) if start == "model" else stage_paths(trimmed, start).model
    return model, first


def run_ablation(recipe: Recipe, output: str | Path, *, seeds: list[int], rows=None,
                 show_progress: bool = True) -> dict | None:
    """Train every row at every seed, then score them (finished work is reused); write and return the
    tables. Launched on several processes (torchrun), every process runs the training steps and rank 0
    alone evaluates and writes (the others return None): evaluation comes after all training, so no
    process waits in a collective while another scores a model."""
    output = Path(output)
    rows = check_rows(rows or ROWS)  # before any training
    if not seeds:
        raise InputError("give at least one seed", field="seeds")
    init_from_launch()
    lead = launched_rank_and_world()[0] == 0
    start = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    log.info(f"{recipe.name}: pre-training once, then {len(rows)} rows x {len(seeds)} seeds into {output}")
    pretrained, first = pretrain_once(recipe, output, show_progress=show_progress and lead)
    # seed-major: a stopped ablation has every row at the first seeds
    runs = [(row, seed, row_recipe(recipe, row, seed, pretrained, output)) for seed in seeds for row in rows]
    training = [TrainStageStep(r, next(iter(r.stages)), step_name=f"{_slug(row)}-seed{seed}") for row, seed, r in runs]
    StepRunner(output, resume=True, show_progress=show_progress).run([*first, *training])
    if not lead:
        return None
    baseline = "pre-training only" if len(recipe.stages) > 1 else "base (no training)"
    # A dynamic row whose rule replaced no set trains to its static twin's very weights: score those once.
    evaluations, first_of, twins = [EvaluateStep(recipe, {"pretrained": pretrained}, output, name="eval-pretrained")], {}, []
    keys = [model_fingerprint(stage_paths(r, next(iter(r.stages))).model) for _, _, r in runs]
    for (row, seed, r), key in zip(runs, keys):
        if key in first_of:
            twins.append(f"- {row}, seed {seed}: the same weights as {first_of[key][0]}, seed {first_of[key][1]} "
                         "(scored once)")
            continue
        first_of[key] = (row, seed)
        evaluations.append(EvaluateStep(r, {_slug(row): stage_paths(r, next(iter(r.stages))).model},
                                        Path(r.output_dir), name=f"eval-{_slug(row)}-seed{seed}"))
    scored = StepRunner(output, resume=True, show_progress=show_progress).run(evaluations)

    def by_dim(step_name: str) -> dict:  # {dim: scores}, as evaluate_model gives them
        models = scored[step_name].stats["models"]
        return {None if k == "dim-full" else int(k[4:]): v for k, v in next(iter(models.values())).items()}

    scores = {baseline: [by_dim("eval-pretrained")]}
    for (row, _, _), key in zip(runs, keys):
        twin_row, twin_seed = first_of[key]
        scores.setdefault(row, []).append(by_dim(f"eval-{_slug(twin_row)}-seed{twin_seed}"))
    dims = list(scores[baseline][0])
    tables = {dim: ablation_table(scores, dim) for dim in dims}
    lines = [f"# Ablation: `{recipe.source or recipe.name}`", "",
             f"From one pre-trained model, the last stage (`{list(recipe.stages)[-1]}`) fine-tuned as each row "
             f"with the same data, {recipe.stages[list(recipe.stages)[-1]].max_steps} steps and seeds {seeds}; "
             + ("C-MTEB, legacy summary" if recipe.eval.suite == "cmteb" else
                f"local suite `{recipe.eval.size}`, {recipe.eval.split} split")
             + "; scores ×100, mean ± std over seeds.", ""]
    for dim, table in tables.items():
        lines += [f"## dim {dim or 'full'}", "", *table, ""]
    first_dim = dims[0]
    if "vanilla" in scores:
        lines += [f"## Paired difference from vanilla (dim {first_dim or 'full'})", "",
                  "Each row minus vanilla, seed by seed: mean and 95 % t-interval over the seeds (an interval "
                  "that holds 0 is no difference at this scale).", "", *paired_table(scores, first_dim, "vanilla"), ""]
    lines += ordering_lines({row: [column_value(s[first_dim], "Avg") for s in runs] for row, runs in scores.items()},
                            baseline)
    lines += ["", *mining_lines(runs, twins)]
    lines.append(f"\nTime: {(time.perf_counter() - start) / 60:.1f} min (this call; finished work is reused).")
    write_text_atomic(output / "ablation.md", "\n".join(lines) + "\n")
    plot_ablation({row: [s[first_dim] for s in runs] for row, runs in scores.items()}, output / "ablation.png",
                  f"{recipe.name}: ablation (dim {first_dim or 'full'}, {len(seeds)} seeds)")
    plot_figures([(row, r) for row, seed, r in runs if seed == seeds[0]], output, f"{recipe.name}, seed {seeds[0]}")
    result = {"recipe": recipe.source, "seeds": seeds, "rows": rows, "baseline": baseline,
              "scores": {row: [{str(d): r for d, r in s.items()} for s in runs] for row, runs in scores.items()}}
    write_json(output / "ablation.json", result)
    print("\n".join(lines))
    return result


def plot_figures(runs: list[tuple[str, Recipe]], output: Path, title: str) -> None:
    """The paper's Figure 3 (figure3.png: positive and hard-negative scores of vanilla and every dynamic row,
    with the sets replaced at each check) and Figure 5 (figure5.png: the loss of vanilla's tasks in turn
    against CBB only's balanced steps), from one seed's rows."""
    logs = {row: stage_paths(r, next(iter(r.stages))).log for row, r in runs}
    shown = [row for row in logs if row == "vanilla" or ROWS[row][1]["mode"] == "dynamic"]
    if len(shown) > 1:
        runs_shown = {row: {"steps": read_log(logs[row]), "checks": read_log(logs[row], "dhnm")} for row in shown}
        mined = {c["task"] for run in runs_shown.values() for c in run["checks"]} or None  # the tasks mining acts on
        plot_hard_negative_scores(runs_shown, output / "figure3.png", f"{title}: hard negatives, static vs dynamic",
                                  tasks=mined)
    schedules = [row for row in ("vanilla", "CBB only") if row in logs]
    if len(schedules) == 2:
        plot_schedule_losses({row: read_log(logs[row]) for row in schedules}, output / "figure5.png",
                             f"{title}: tasks in turn vs cross-GPU batch balance")


def mining_lines(runs: list[tuple[str, int, Recipe]], twins: list[str]) -> list[str]:
    """What dynamic hard-negative mining did in each dynamic row: checks and sets replaced per seed."""
    lines = ["## Dynamic hard negatives", ""]
    for row, seed, r in runs:
        if ROWS[row][1]["mode"] != "dynamic":
            continue
        mining = (read_summary(stage_paths(r, next(iter(r.stages)))) or {}).get("mining") or {}
        counts = ", ".join(f"{task}: {m['checks']} checks, {m['replaced']} sets replaced ({m['rows_replaced']} of "
                           f"{m['rows']} rows), {m.get('stale', 0)} stale rows skipped, "
                           f"{m.get('false_negatives_dropped', 0)} false negatives dropped"
                           for task, m in mining.items())
        lines.append(f"- {row}, seed {seed}: {counts or 'no mining summary'}")
    if twins:
        lines += ["", ("Rows whose model is bit-identical to an earlier row's (no set replaced, so the dynamic "
                       "row trained exactly as its static twin):"), "", *twins]
    return lines


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def ablation_table(scores: dict[str, list[dict]], dim) -> list[str]:
    """Markdown rows = methods, columns = categories, Avg and guard tasks; mean ± std over the runs."""
    columns = score_columns(next(iter(scores.values()))[0][dim])
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row, runs in scores.items():
        cells = []
        for c in columns:
            mean, std = mean_std([column_value(r[dim], c) for r in runs])
            cells.append(f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if len(runs) > 1 else ""))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def paired_table(scores: dict[str, list[dict]], dim, reference: str) -> list[str]:
    """Markdown rows = methods other than `reference` (with as many runs, in the same seed order), columns as
    `ablation_table`: the mean of the per-seed differences and its 95 % t-interval."""
    columns = score_columns(next(iter(scores.values()))[0][dim])
    ref = scores[reference]
    lines = ["| method − vanilla | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row, runs in scores.items():
        if row == reference or len(runs) != len(ref):
            continue
        cells = []
        for c in columns:
            mean, low, high = paired_interval([column_value(a[dim], c) - column_value(b[dim], c)
                                               for a, b in zip(runs, ref)])
            cells.append(f"{100 * mean:+.2f}" + (f" [{100 * low:+.2f}, {100 * high:+.2f}]" if low is not None else ""))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def paired_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of the differences: Student's t-interval over the seeds (no interval from one)."""
    from scipy import stats

    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, None, None
    half = stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return mean, mean - half, mean + half


def ordering_lines(avg: dict[str, list[float]], baseline: str) -> list[str]:
    """Whether the paper's ordering holds on the Avg means: both >= each alone >= vanilla >= baseline."""
    means = {row: statistics.mean(v) for row, v in avg.items()}
    spread = max((statistics.stdev(v) for v in avg.values() if len(v) > 1), default=0.0)
    pairs = [("CBB + DHNM", "CBB only"), ("CBB + DHNM", "DHNM (loss-weight)"), ("CBB only", "vanilla"),
             ("DHNM (paper rule)", "vanilla"), ("DHNM (loss-weight)", "vanilla"), ("vanilla", baseline)]
    lines = ["## The paper's ordering (Avg)", "",
             "Paper (C-MTEB Avg, Table 3): " + ", ".join(f"{k} {v}" for k, v in PAPER_AVG.items()) + ".", ""]
    for hi, lo in pairs:
        if hi in means and lo in means:
            diff = means[hi] - means[lo]
            verdict = ("holds" if diff >= 0 else "reversed") + (" (inside the seeds' spread)" if abs(diff) <= spread else "")
            lines.append(f"- {hi} ≥ {lo}: {verdict}, {100 * diff:+.2f}")
    lines.append(f"- largest std over seeds of a row: {100 * spread:.2f}")
    return lines


def plot_ablation(scores: dict[str, list[dict]], path: Path, title: str) -> None:
    """Grouped bars per column (categories, Avg), one bar per method, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns = [c for c in score_columns(next(iter(scores.values()))[0]) if not c.startswith("guard: ")]
    x, width = np.arange(len(columns)), 0.8 / len(scores)
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(columns)), 5))
    for i, (row, runs) in enumerate(scores.items()):
        stats = [mean_std([100 * column_value(r, c) for r in runs]) for c in columns]
        ax.bar(x + (i - (len(scores) - 1) / 2) * width, [m for m, _ in stats], width, yerr=[s for _, s in stats],
               capsize=3, label=row)
    ax.set_xticks(x, columns, rotation=15)
    lows = [100 * column_value(r, c) for runs in scores.values() for r in runs for c in columns]
    ax.set_ylim(max(0.0, min(lows) - 5), min(100.0, max(lows) + 3))
    ax.set_ylabel("score ×100")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=len(scores), loc="upper center", bbox_to_anchor=(0.5, -0.2))  # off the bars
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

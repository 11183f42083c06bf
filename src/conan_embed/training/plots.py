"""Training plots (matplotlib, Agg): the loss curve, the paper's Figure 3 (positive and hard-negative
scores against steps, with dynamic mining's replacements) and Figure 5 (the loss of each schedule)."""

from __future__ import annotations

from pathlib import Path


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    return plt, fig, ax


def _finish(plt, fig, ax, path, xlabel: str, ylabel: str, title: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_loss_curve(logs: dict[str, list[dict]], path: str | Path, title: str = "") -> Path | None:
    """A loss-vs-step PNG of one or more stages' log.jsonl records ({stage: records}), the stages one
    after the other. One line per task: with tasks taking turns, a single line would zig-zag between
    their loss scales."""
    if not any(logs.values()):
        return None
    plt, fig, ax = _figure()
    offset = 0
    for stage, records in logs.items():
        if not records:
            continue
        tasks = sorted({k[5:] for r in records for k in r if k.startswith("loss/")})
        prefix = f"{stage}: " if len(logs) > 1 else ""
        if len(tasks) <= 1:
            ax.plot([offset + r["step"] for r in records], [r["loss"] for r in records],
                    label=prefix + (tasks[0] if tasks else "loss"), linewidth=1.2)
        for task in tasks if len(tasks) > 1 else []:
            points = [(offset + r["step"], r[f"loss/{task}"]) for r in records if f"loss/{task}" in r]
            ax.plot(*zip(*points), label=prefix + task, linewidth=1.2)
        offset += records[-1]["step"]
        if len(logs) > 1:
            ax.axvline(offset, color="grey", linewidth=0.5, linestyle=":")
    return _finish(plt, fig, ax, path, "step" + (" (stages one after the other)" if len(logs) > 1 else ""), "loss",
                   title)


def plot_schedule_losses(runs: dict[str, list[dict]], path: str | Path, title: str = "") -> Path | None:
    """Figure 5: each run's loss per step against the share of its run done ({label: log step lines}); a
    sequential step trains one task, so its curve jumps between the tasks' loss scales, a CBB step sums them."""
    if not any(runs.values()):
        return None
    plt, fig, ax = _figure()
    for label, steps in runs.items():
        if steps:
            last = steps[-1]["step"]
            ax.plot([r["step"] / last for r in steps], [r["loss"] for r in steps], label=label, linewidth=1.2)
    return _finish(plt, fig, ax, path, "share of the run done", "training loss of the step", title)


def score_series(records: list[dict]) -> dict[str, dict[str, list]]:
    """{task: {"step": [...], "positive": [...], "negative": [...]}} from log.jsonl step lines."""
    out: dict[str, dict[str, list]] = {}
    for r in records:
        for key, value in r.items():
            if key.startswith("score/") and key.endswith("/negative") and value is not None:
                task = key[6:-9]
                series = out.setdefault(task, {"step": [], "positive": [], "negative": []})
                series["step"].append(r["step"])
                series["negative"].append(value)
                series["positive"].append(r.get(f"score/{task}/positive"))
    return out


def plot_hard_negative_scores(runs: dict[str, dict], path: str | Path, title: str = "",
                              smooth: int = 5, tasks=None) -> Path | None:
    """Figure 3 of Conan-Embedding: each run's mean positive score (solid) and mean hard-negative score
    (dashed) against steps, smoothed over `smooth` logged steps, and the sets dynamic mining replaced
    at each check (bars, right axis). `runs` = {label: {"steps": log step lines, "checks": "dhnm" lines}};
    `tasks`: only these tasks' scores (None: every task's)."""
    import numpy as np

    series = {label: {t: s for t, s in score_series(run.get("steps") or []).items() if tasks is None or t in tasks}
              for label, run in runs.items()}
    if not any(series.values()):
        return None
    plt, fig, ax = _figure()
    bars = ax.twinx() if any(run.get("checks") for run in runs.values()) else None
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    k = 0
    for label, tasks in series.items():
        for task, s in tasks.items():
            colour = colours[k % len(colours)]
            k += 1
            name = " ".join([label] * bool(label) + [task] * (len(tasks) > 1 or not label))
            for field, style in (("positive", "-"), ("negative", "--")):
                values = np.array([np.nan if v is None else v for v in s[field]], dtype=float)
                w = max(1, min(smooth, len(values)))
                smoothed = np.convolve(np.nan_to_num(values, nan=np.nanmean(values)), np.ones(w) / w, mode="valid")
                ax.plot(s["step"][w - 1:], smoothed, style, color=colour, linewidth=1.3,
                        label=f"{name}: {'positive' if field == 'positive' else 'hard negative'}")
            checks = [c for c in runs[label].get("checks") or [] if c.get("task") == task]
            if bars is not None and checks:
                steps = [c["step"] for c in checks]
                gap = min((b - a for a, b in zip(steps, steps[1:])), default=1)
                bars.bar(steps, [c["replaced"] for c in checks], width=max(0.8, 0.5 * gap), alpha=0.25, color=colour)
    if bars is not None:
        bars.set_ylabel("sets replaced at a check (bars)")
    return _finish(plt, fig, ax, path, "step", "mean cosine with the query", title)

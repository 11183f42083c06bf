"""report.md: a header, the recipe parts that ran, then each step's own section (recipe_steps.py: a step's
`report` calls one of the `*_section` functions here with its stats): curation, stages, mining, merge and
the evaluation tables (the base against every model, per category and Avg, at each dim)."""

from __future__ import annotations

from pathlib import Path

from conan_embed.evaluation.suite import CATEGORIES
from conan_embed.files import write_text_atomic
from conan_embed.recipe.schema import Recipe


def _fmt(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _delta(a, b) -> str:
    return "–" if a is None or b is None else f"{100 * (b - a):+.2f}"


def score_table(evals: dict[str, dict], dim_key: str) -> list[str]:
    """Markdown rows: one per category and the weighted Avg; one column per model, then final - base."""
    labels = [m for m in evals if dim_key in evals[m]]
    first, last = labels[0], labels[-1]
    some = evals[first][dim_key]
    if not some["categories"]:  # `eval.tasks: [guard]`: the guard table says it all
        return []
    header = ["category (metric)", *labels, f"{last} − {first}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    metric = {t["category"]: t["metric"] for t in some["tasks"].values()}
    for cat in CATEGORIES:
        if cat not in some["categories"]:
            continue
        vals = [evals[m][dim_key]["categories"].get(cat) for m in labels]
        lines.append(f"| {cat} ({metric.get(cat, '')}) | " + " | ".join(_fmt(v) for v in vals)
                     + f" | {_delta(vals[0], vals[-1])} |")
    vals = [evals[m][dim_key]["avg"] for m in labels]
    lines.append("| **Avg** (weighted by datasets) | " + " | ".join(f"**{_fmt(v)}**" for v in vals)
                 + f" | **{_delta(vals[0], vals[-1])}** |")
    return lines


def guard_table(evals: dict[str, dict], dim_key: str) -> list[str]:
    """The general-domain guard tasks: base score, then each stage's score and its change against the base."""
    labels = [m for m in evals if dim_key in evals[m]]
    first = labels[0]
    names = list(evals[first][dim_key].get("guard") or {})
    if not names:
        return []
    lines = ["| guard task (nDCG@10) | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
    for name in names:
        base = evals[first][dim_key]["guard"][name]
        cells = [_fmt(base)] + [f"{_fmt(evals[m][dim_key]['guard'].get(name))} ({_delta(base, evals[m][dim_key]['guard'].get(name))})"
                                for m in labels[1:]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def forgetting_lines(evals: dict[str, dict]) -> list[str]:
    """Every model, dim, category or guard task more than 1 point below the base (first model)."""
    from conan_embed.evaluation.forgetting import regressions

    labels = list(evals)
    found = [f"- **{m}**, {dim_key}: {r}" for m in labels[1:] for dim_key, result in evals[m].items()
             if dim_key in evals[labels[0]] for r in regressions(evals[labels[0]][dim_key], result)]
    return found or [f"None: every model is within 1 point of `{labels[0]}` on every category and guard task, or above."]


def curation_section(stats: dict, recipe: Recipe) -> list[str]:
    from conan_embed.curate.retention_report import retention_markdown, teacher_summary
    from conan_embed.curate.teacher import histogram_text

    lines = ["## Data curation", "",
             f"`{', '.join(stats['inputs'])}` -> `{stats['output']}/kept/` ({stats['rows_in']:,} -> "
             f"{stats['kept']:,} pairs); rejected rows with their reasons in `{stats['output']}/rejected/`.", "",
             *retention_markdown(stats), ""]
    if stats.get("teacher"):
        lines += teacher_summary(stats)
        if stats["teacher"]["model"] == recipe.model.base:
            lines.append("The teacher is the base model itself (the only embedder shipped offline): self-filtering. "
                         "The paper's teacher is bge-large-zh-v1.5 with an absolute cut of 0.4.")
        lines += ["", "```", histogram_text(stats["teacher"]["histogram"], stats["teacher"]["cut"]), "```"]
    return lines + [""]


def mining_section(m: dict) -> list[str]:
    t = m["timings"]
    rows = f"{m['rows']:,}" + (f" of {m['rows_total']:,}" if m.get("rows_total", m["rows"]) != m["rows"] else "")
    corpus = f"{m['corpus_size']:,} passages"
    if m.get("rerank_top"):
        corpus = (f"{m['corpus_size']:,} of {m['corpus_total']:,} passages: the rows' positives and first "
                  f"{m['rerank_top']} input candidates, re-ranked")
    return ["## Candidate mining", "",
            f"`{m['input']}`: {rows} rows ranked over `{m['corpus']}` ({corpus}) by "
            f"`{m['model']}` ({m['index']} index); the top {m['top_k']} ids without the row's positives -> "
            f"`{m['output']}` ({t['encode_s']:.0f} s encoding, cached; {t['search_s']:.0f} s search).", ""]


def parts_lines(metrics: dict) -> list[str]:
    """Which parts of the Conan recipe this run used: curation, mining, CBB, DHNM, merging."""
    def mark(ran: bool, text: str) -> str:
        return f"- [{'x' if ran else ' '}] {text}"

    stages = metrics["stages"]
    cbb = [n for n, s in stages.items() if s.get("composer") == "cbb"]
    dynamic = {f"{n}/{t}": m for n, s in stages.items() for t, m in (s.get("mining") or {}).items()}
    checks, replaced = (sum(m[k] for m in dynamic.values()) for k in ("checks", "replaced"))
    c, m, merge = metrics.get("curation"), metrics.get("mining"), metrics.get("merge")
    return [
        mark(bool(c), "data curation" + (f": {c['rows_in']:,} -> {c['kept']:,} pairs" if c else "")),
        mark(bool(m), "hard-negative mining with a model" + (f" (`{m['model']}`, {m['rows']:,} rows)" if m else
                                                               ": no, the data's own candidates")),
        mark(bool(cbb), "cross-GPU batch balance" + (f" in {', '.join(f'`{n}`' for n in cbb)}" if cbb else "")),
        mark(bool(dynamic), "dynamic hard-negative mining" + (
            f" in {', '.join(f'`{k}`' for k in dynamic)}: {checks} checks, {replaced:,} sets replaced"
            + (" (none was exhausted: see Hard negatives)" if not replaced else "") if dynamic else "")),
        mark(bool(merge), "model merging (LM-Cocktail)"),
    ]


def stage_section(s: dict) -> list[str]:
    """One stage: where it started, its tasks, time, speed and loss; each retrieval task's hard negatives."""
    tasks = ", ".join(f"{t} ({v['rows']:,}, {v['batch_size']})" for t, v in s["tasks"].items())
    rate = ", ".join(f"{t} {v:.1f}" for t, v in (s.get("median_pairs_per_s") or {}).items()) or "–"
    loss = "–" if s.get("final_loss") is None else f"{s['final_loss']:.4f}"
    name = s["stage"]
    lines = [f"## Stage `{name}`", "", "| starts from | steps | tasks (rows, batch) | train time | median pairs/s | final loss |",
             "|---|---|---|---|---|---|",
             f"| `{s['init']}` | {s['steps']} | {tasks} | {s['train_seconds'] / 60:.1f} min | {rate} | {loss} |", "",
             f"Loss: `{name}/loss.png`, `{name}/log.jsonl` (all stages: `loss.png`).", ""]
    mined = s.get("mining") or {}
    negatives = []
    for task, info in s["tasks"].items():
        m = mined.get(task)
        if info.get("kind") != "retrieval":
            continue
        if m is None:
            negatives.append(f"- {task}: static hard negatives (each row's first window of candidates)")
        else:
            negatives.append(f"- {task}: **dynamic** hard negatives: {m['checks']} checks, {m['replaced']:,} sets "
                             f"replaced ({m['rows_replaced']:,} of {m['rows']:,} rows at least once, deepest window "
                             f"{m['deepest_window']}), {m['rows_out_of_candidates']:,} rows out of candidates")
    if negatives:
        lines += ["Hard negatives:", "", *negatives, ""]
    if mined:
        lines += ["Positive and hard-negative scores against steps, with the sets replaced at each check (the "
                  f"paper's Figure 3): `{name}/negatives.png`; each check's counts are the `\"event\": \"dhnm\"` "
                  f"lines of `{name}/log.jsonl`.", ""]
    return lines


def merge_section(m: dict) -> list[str]:
    lines = ["## Merge", "", "`merged/` = " + " + ".join(f"{w:.3f} × `{n}`" for n, w in m["weights"].items())
             + f" ({m['method']}; docs/forgetting.md); it is the final model.", ""]
    if m.get("example_losses"):
        lines += [f"- `{n}`: example loss " + ", ".join(f"{t} {v:.4f}" for t, v in losses.items())
                  for n, losses in m["example_losses"].items()] + [""]
    return lines


def evaluation_section(evals: dict, settings: dict) -> list[str]:
    """The score and guard tables at each dim, the forgetting check and the task sizes."""
    if not evals:
        return []
    lines = ["## Evaluation", "",
             (f"C-MTEB (legacy summary: mean over datasets, docs/evaluation.md), "
              if settings.get("suite") == "cmteb" else
              f"Local C-MTEB-shaped suite, {settings.get('split', 'test')} split, size `{settings['size']}`, ")
             + f"{settings['precision']} encoding; "
             "scores ×100. Main metric per category in brackets.", ""]
    any_model = next(iter(evals.values()))
    for dim_key, result in any_model.items():
        lines += [f"### {dim_key.replace('dim-full', 'full dim')} ({result['embedding_dim']} dims)", ""]
        if table := score_table(evals, dim_key):
            lines += table + [""]
        if guard := guard_table(evals, dim_key):
            lines += ["General-domain guard (held-out People's Daily articles, not in the Avg; change against "
                      "the base in brackets):", "", *guard, ""]
    lines += ["### Forgetting check", "", "Categories and guard tasks more than 1 point below the base "
              "(docs/forgetting.md):", "", *forgetting_lines(evals), ""]
    lines += ["Task sizes:", ""]
    for name, t in next(iter(any_model.values()))["tasks"].items():
        lines.append(f"- {name} ({t['category']}): " + ", ".join(f"{k} {v:,}" for k, v in t["size"].items()))
    return lines + [""]


def write_report(metrics: dict, recipe: Recipe, sections: list[list[str]], path: str | Path) -> Path:
    """report.md: the header and the parts that ran (from metrics.json's content), then the steps' sections."""
    lines = [f"# Run report: {recipe.name}", ""]
    if recipe.description:
        lines += [recipe.description.strip(), ""]
    lines += [f"- base model: `{metrics['base_model']}`",
              f"- final model: `{metrics['final_model']}` (loads with `SentenceTransformer(path)`, "
              f"`truncate_dim=` any Matryoshka dim)",
              f"- created {metrics['created']}; total {metrics['timings']['total_s'] / 60:.1f} min", ""]
    lines += ["## Recipe parts that ran", "", *parts_lines(metrics), ""]
    for section in sections:
        lines += section
    return write_text_atomic(path, "\n".join(lines))

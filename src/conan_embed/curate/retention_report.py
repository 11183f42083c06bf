"""The retention table and the teacher's histogram as text (terminal) and Markdown (report.md)."""

from __future__ import annotations

from conan_embed.curate.teacher import histogram_text


def _reasons(reasons: dict, top: int = 3) -> str:
    items = list(reasons.items())
    text = ", ".join(f"{k} {v:,}" for k, v in items[:top])
    return text + (f", +{len(items) - top} more" if len(items) > top else "")


def retention_markdown(stats: dict) -> list[str]:
    lines = ["| stage | in | kept | dropped | % of in | top reasons |", "|---|---:|---:|---:|---:|---|"]
    for row in stats["table"]:
        share = 100 * row["dropped"] / row["in"] if row["in"] else 0.0
        lines.append(f"| {row['stage']} | {row['in']:,} | {row['kept']:,} | {row['dropped']:,} | {share:.1f} | "
                     f"{_reasons(row['reasons']) or '–'} |")
    total = stats["rows_in"]
    lines.append(f"| **total** | **{total:,}** | **{stats['kept']:,}** | **{total - stats['kept']:,}** | "
                 f"**{100 * (total - stats['kept']) / max(total, 1):.1f}** | |")
    return lines


def teacher_summary(stats: dict) -> list[str]:
    t = stats.get("teacher")
    if not t:
        return []
    rule = [f"percentile {t['percentile']:g}" if t["percentile"] else None,
            f"threshold {t['threshold']:g}" if t["threshold"] is not None else None]
    cut = "none" if t["cut"] is None else f"{t['cut']:.4f}"
    q, b = t["score_quantiles"], t["mismatched_pair_quantiles"]
    lines = [f"Teacher `{t['model']}` scored {t['scored']:,} pairs ({' and '.join(r for r in rule if r) or 'no cut'}"
             f"; cut at cosine {cut})."]
    if q:
        lines.append(f"Pair cosines: p5 {q['p5']}, p50 {q['p50']}, p90 {q['p90']}" +
                     (f"; mismatched pairs (each query with the next row's passage): p50 {b['p50']}, p99 {b['p99']}."
                      if b else "."))
    return lines


def format_stats(stats: dict) -> str:
    """What `conan-embed curate` prints at the end."""
    lines = ["Retention:", *retention_markdown(stats)]
    if stats.get("teacher"):
        lines += ["", *teacher_summary(stats), "", histogram_text(stats["teacher"]["histogram"], stats["teacher"]["cut"])]
    lines += ["", f"kept rows: {stats['output']}/kept/  rejected rows with reasons: {stats['output']}/rejected/"]
    return "\n".join(lines)

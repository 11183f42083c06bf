"""Every Matryoshka dim of a model in one pass of encoding: `conan-embed eval MODEL --dims all`.

The local suite runs once per dim with one embedding cache, so each text is encoded once at the full
size and cut (then re-normalised) per dim. Writes `<output>/dim-<d>/eval.json` per dim, and
`matryoshka.md` (rows = dims, columns = categories, Avg, guard tasks) and `matryoshka.png` (each column
against the dim) in `<output>`.
"""

from __future__ import annotations

from pathlib import Path

from conan_embed.errors import InputError
from conan_embed.evaluation.forgetting import column_value, score_columns
from conan_embed.files import write_text_atomic


def parse_dims(spec: str, model) -> list[int]:
    """"all" (the model's Matryoshka dims: conan_embed.json, else its output size) or comma-separated dims."""
    out_dim = model.get_embedding_dimension()
    if spec.strip().lower() == "all":
        return sorted(set(getattr(model, "conan_matryoshka_dims", None) or ()) | {out_dim})
    try:
        dims = sorted({int(d) for d in spec.split(",") if d.strip()})
    except ValueError:
        raise InputError(f"--dims takes 'all' or comma-separated integers, got {spec!r}", field="dims") from None
    if not dims or any(d <= 0 or d > out_dim for d in dims):
        raise InputError(f"--dims must be between 1 and the model's output size {out_dim}, got {spec!r}", field="dims")
    return dims


def run_dims(model, dims: str | list[int], output_dir: str | Path, **suite_kwargs) -> dict[int, dict]:
    """Score `model` (a folder, shipped name or SentenceTransformer) at every dim of `dims`; returns
    {dim: eval.json content} and writes the table and the plot."""
    from conan_embed.evaluation.suite import _load_model, run_suite

    st_model, _, name = _load_model(model)
    dims = parse_dims(dims, st_model) if isinstance(dims, str) else sorted(dims)
    output_dir, cache = Path(output_dir), {}
    results = {d: run_suite(st_model, dim=d, output_dir=output_dir / f"dim-{d}", embedding_cache=cache, **suite_kwargs)
               for d in dims}
    lines = matryoshka_table(results)
    write_text_atomic(output_dir / "matryoshka.md", f"# Matryoshka dims: {name}\n\n" + "\n".join(lines) + "\n")
    plot_dims(results, output_dir / "matryoshka.png", f"{name}: score per Matryoshka dim")
    print("\n".join(lines))
    return results


def matryoshka_table(results: dict[int, dict]) -> list[str]:
    columns = score_columns(next(iter(results.values())))
    return (["| dim | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
            + [f"| {d} | " + " | ".join(f"{100 * column_value(r, c):.2f}" for c in columns) + " |"
               for d, r in results.items()])


def plot_dims(results: dict[int, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = list(results)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in score_columns(results[dims[0]]):
        ax.plot(dims, [100 * column_value(results[d], c) for d in dims], marker="o",
                linewidth=2.5 if c == "Avg" else 1.2, linestyle="--" if c.startswith("guard: ") else "-", label=c)
    ax.set_xticks(dims)
    ax.set_xlabel("embedding dim (Matryoshka prefix)")
    ax.set_ylabel("score ×100")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

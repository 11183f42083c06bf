"""Forgetting: where a trained model scores below its base (docs/forgetting.md).

Works on eval.json results (`run_suite`'s return value): each C-MTEB category and each general-domain
guard task of the model is compared with the same row of its base's result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from conan_embed.errors import InputError

TOLERANCE = 0.01  # one point on the ×100 scale the reports print


@dataclass(frozen=True)
class Regression:
    """One row (a category, or a guard task) where the model is more than the tolerance below its base."""

    row: str
    base: float
    model: float

    @property
    def change(self) -> float:
        return self.model - self.base

    def __str__(self) -> str:
        return f"{self.row}: {100 * self.base:.2f} -> {100 * self.model:.2f} ({100 * self.change:+.2f})"


def comparable_scores(result: dict) -> dict[str, float]:
    """Category means and guard tasks (prefixed "guard: ") of an eval.json result, or of the shorter
    per-dim score blocks of a run's metrics.json."""
    guard = result.get("guard") or {}
    scores = dict(result.get("categories") or {})
    scores.update({f"guard: {name}": e["main_score"] if isinstance(e, dict) else e for name, e in guard.items()})
    return scores


def score_columns(result: dict) -> list[str]:
    """A result's table columns: the categories in C-MTEB order, the weighted "Avg" (when any category
    was scored), then the guard tasks."""
    from conan_embed.evaluation.suite import CATEGORIES

    return ([c for c in CATEGORIES if c in result["categories"]] + ["Avg"] * (result.get("avg") is not None)
            + [c for c in comparable_scores(result) if c.startswith("guard: ")])


def column_value(result: dict, column: str) -> float:
    """A column of a result: a category's score, the "Avg", or "guard: <task>"."""
    return result["avg"] if column == "Avg" else comparable_scores(result)[column]


def regressions(base: dict, model: dict, tolerance: float = TOLERANCE) -> list[Regression]:
    """The rows scored for both where `model` falls more than `tolerance` below `base`."""
    if tolerance < 0:
        raise InputError(f"tolerance must be >= 0, got {tolerance}", field="tolerance")
    for key in ("split", "size", "dim"):  # absent in a run's metrics.json blocks
        if key in base and key in model and base[key] != model[key]:
            raise InputError(f"the two results were scored differently: {key} {base[key]!r} (base) vs "
                             f"{model[key]!r}; evaluate both with the same split, size and dim", field=key)
    b, m = comparable_scores(base), comparable_scores(model)
    return [Regression(row, b[row], m[row]) for row in b if row in m and m[row] < b[row] - tolerance]


def load_result(path: str | Path) -> dict:
    """An eval.json (or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "eval.json"
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("no eval.json here: evaluate the base first (`conan-embed eval BASE --output DIR`)",
                         path=path) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc}", path=path) from None
    if not isinstance(result, dict) or "categories" not in result:
        raise InputError("not an eval.json result: it has no 'categories'", path=path)
    return result

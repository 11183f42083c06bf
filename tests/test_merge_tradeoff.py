"""The merge-weight rule of benchmarks/merge_tradeoff.py (docs/forgetting.md): the mean over seeds, and
by how much a weight misses it."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from merge_tradeoff import acceptable, mean_result, shortfall  # noqa: E402

from conan_embed.evaluation.forgetting import column_value, score_columns  # noqa: E402


def result(retrieval: float, classification: float, guard: float) -> dict:
    return {"avg": (retrieval + classification) / 2,
            "categories": {"Retrieval": retrieval, "Classification": classification},
            "guard": {"PeoplesDailyTitleRetrieval": {"main_score": guard}}}


BASE = result(0.50, 0.80, 0.80)


def test_one_seed_below_the_base_passes_when_the_mean_is_not():
    seeds = [result(0.55, 0.798, 0.80), result(0.55, 0.804, 0.80)]  # Classification mean 0.801
    assert not acceptable(BASE, seeds[0])
    assert acceptable(BASE, seeds)


def test_guard_tasks_may_fall_one_point_categories_none():
    assert acceptable(BASE, result(0.55, 0.80, 0.7905))
    assert not acceptable(BASE, result(0.55, 0.80, 0.7895))
    assert not acceptable(BASE, result(0.55, 0.7999, 0.80))
    assert acceptable(BASE, result(0.55, 0.798, 0.80), category_tolerance=0.0025)


def test_mean_result_reads_like_a_result():
    seeds = [result(0.50, 0.80, 0.70), result(0.60, 0.82, 0.80)]
    mean = mean_result(seeds, score_columns(BASE))
    assert [round(column_value(mean, c), 6) for c in score_columns(BASE)] == [0.55, 0.81, 0.68, 0.75]


def test_shortfall_is_the_worst_rows_miss():
    assert shortfall(BASE, result(0.55, 0.80, 0.80)) == 0
    assert round(shortfall(BASE, result(0.55, 0.797, 0.785)), 6) == 0.005  # the guard: 1.5 points, 1 allowed
    assert round(shortfall(BASE, result(0.49, 0.797, 0.80)), 6) == 0.01  # Retrieval 1 point below
    assert round(shortfall(BASE, result(0.55, 0.797, 0.80), category_tolerance=0.001), 6) == 0.002


def test_weights_are_vectors_over_the_merge_models():
    from merge_tradeoff import label, parse_weights

    models = ["finetune", "pretrain", "model"]
    # a bare share pairs the fine-tuned model with the base; the order is by fine-tuned share, then the next
    assert parse_weights("0.5/0.25/0.25,0.7,0.5/0.5/0", models) == [(0.7, 0.0, 0.3), (0.5, 0.5, 0.0), (0.5, 0.25, 0.25)]
    assert label((0.5, 0.25, 0.25)) == "0.5/0.25/0.25"
    for bad in ("0.5/0.5", "0.5/0.6/0.1", "1.2/-0.2/0"):
        with pytest.raises(SystemExit, match="one per"):
            parse_weights(bad, models)
    with pytest.raises(SystemExit, match="base"):
        parse_weights("0.5", ["finetune", "pretrain"])

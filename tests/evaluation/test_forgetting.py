import json

import pytest

from conan_embed.errors import InputError
from conan_embed.evaluation.forgetting import load_result, regressions
from conan_embed.recipe.run_report import forgetting_lines, guard_table

BASE = {"categories": {"Retrieval": 0.50, "Classification": 0.80},
        "guard": {"PeoplesDailyTitleRetrieval": {"main_score": 0.70}}}


def test_regressions_flag_drops_of_more_than_one_point_only():
    model = {"categories": {"Retrieval": 0.60, "Classification": 0.795},
             "guard": {"PeoplesDailyTitleRetrieval": {"main_score": 0.65}}}
    found = regressions(BASE, model)
    assert [(r.row, round(r.change, 4)) for r in found] == [("guard: PeoplesDailyTitleRetrieval", -0.05)]
    assert "70.00 -> 65.00 (-5.00)" in str(found[0])
    assert [r.row for r in regressions(BASE, model, tolerance=0.0)] == [
        "Classification", "guard: PeoplesDailyTitleRetrieval"]
    assert regressions(BASE, {"categories": {"STS": 0.1}}) == []  # nothing in common: nothing to flag
    with pytest.raises(InputError, match="tolerance"):
        regressions(BASE, model, tolerance=-1)


def test_results_scored_differently_are_not_compared():
    with pytest.raises(InputError, match="split 'test' \\(base\\) vs 'valid'"):
        regressions({**BASE, "split": "test"}, {**BASE, "split": "valid"})
    with pytest.raises(InputError, match="dim None"):
        regressions({**BASE, "dim": None}, {**BASE, "dim": 256})
    assert regressions({**BASE, "split": "valid"}, BASE) == []  # a run's metrics.json blocks carry no split


def test_report_shows_guard_changes_and_flags(tmp_path):
    evals = {"base": {"dim-full": {"categories": {"Retrieval": 0.5}, "guard": {"G": 0.7}}},
             "finetune": {"dim-full": {"categories": {"Retrieval": 0.55}, "guard": {"G": 0.64}}}}
    table = "\n".join(guard_table(evals, "dim-full"))
    assert "| G | 70.00 | 64.00 (-6.00) |" in table
    (line,) = forgetting_lines(evals)
    assert line.startswith("- **finetune**, dim-full: guard: G: 70.00 -> 64.00")
    evals["finetune"]["dim-full"]["guard"]["G"] = 0.695
    assert forgetting_lines(evals)[0].startswith("None")


def test_load_result_names_the_file(tmp_path):
    with pytest.raises(InputError, match="no eval.json"):
        load_result(tmp_path)
    (tmp_path / "eval.json").write_text("{")
    with pytest.raises(InputError, match="eval.json: not valid JSON"):
        load_result(tmp_path)
    (tmp_path / "eval.json").write_text(json.dumps(BASE))
    assert load_result(tmp_path / "eval.json") == BASE

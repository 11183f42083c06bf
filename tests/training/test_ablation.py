"""`conan-embed ablation`: one pre-training, six fine-tuning rows x seeds, a Table-3-style report with paired
differences from vanilla."""

from __future__ import annotations

import json

import pytest
import yaml

from conan_embed.cli import main
from conan_embed.errors import InputError
from conan_embed.recipe.ablation import ROWS, ablation_table, ordering_lines, paired_interval, paired_table, row_recipe
from conan_embed.recipe.schema import load_recipe
from conan_embed.training.callbacks import read_log


@pytest.fixture
def ablation_recipe(recipe_dict, tmp_path):
    finetune = recipe_dict["stages"]["finetune"]
    finetune["max_steps"] = 4
    # the rows set the mode and rule; at ratio 100 and weight_drop 1e9 no set is ever exhausted, so a dynamic
    # row trains as its static twin
    finetune["mining"] = {"check_every": 2, "ratio": 100, "weight_drop": 1e9}
    recipe_dict["eval"] = {"size": "tiny", "dims": [None], "tasks": ["Retrieval", "STS"]}
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(recipe_dict, sort_keys=False))
    return path


def test_rows_differ_only_in_composer_and_mining(ablation_recipe, tmp_path):
    recipe = load_recipe(ablation_recipe)
    rows = {row: row_recipe(recipe, row, 8, tmp_path / "pre", tmp_path / "out") for row in ROWS}
    stages = {row: r.stages["finetune"] for row, r in rows.items()}
    assert {row: (s.composer_config.name, s.mining.mode, s.mining.rule, s.mining.relative_margin)
            for row, s in stages.items()} == {
        "vanilla": ("sequential", "static", "paper", None), "CBB only": ("cbb", "static", "paper", None),
        "DHNM (paper rule)": ("sequential", "dynamic", "paper", None),
        "DHNM (loss-weight)": ("sequential", "dynamic", "loss-weight", None),
        "CBB + DHNM": ("cbb", "dynamic", "loss-weight", None),
        "+ false-negative filter": ("cbb", "dynamic", "loss-weight", 0.0)}
    assert all(list(r.stages) == ["finetune"] and r.seed == 8 and r.merge is None for r in rows.values())
    assert {s.init for s in stages.values()} == {str(tmp_path / "pre")}
    assert len({r.output_dir for r in rows.values()}) == 6
    assert all(s.mining.check_every == 2 and s.max_steps == 4 for s in stages.values())
    with pytest.raises(InputError, match="unknown ablation row 'both'"):
        row_recipe(recipe, "both", 8, tmp_path, tmp_path)


def test_ablation_writes_the_table_and_reuses_finished_work(ablation_recipe, tmp_path, capsys):
    out = tmp_path / "abl"
    assert main(["ablation", str(ablation_recipe), "--seeds", "2", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "ablation.json").read_text())
    assert result["seeds"] == [7, 8] and result["baseline"] == "pre-training only"
    assert {row: len(runs) for row, runs in result["scores"].items()} == {"pre-training only": 1, **{r: 2 for r in ROWS}}
    table = (out / "ablation.md").read_text()
    for row in ["pre-training only", *ROWS]:
        assert f"| {row} |" in table
    assert "| method | Retrieval | STS | Avg |" in table and "## The paper's ordering (Avg)" in table
    assert "CBB + DHNM ≥ CBB only:" in table and table.strip() in printed  # the table is printed too
    assert "## Paired difference from vanilla (dim full)" in table
    assert "| CBB + DHNM | " in table.split("## Paired difference")[1]
    for figure in ("ablation.png", "figure3.png", "figure5.png"):
        assert (out / figure).stat().st_size > 10_000, figure
    # every row fine-tuned the one pre-trained model, which trained once
    pretrained = out / "pretrained" / "pretrain" / "model"
    for run in out.glob("*-seed*"):
        assert json.loads((run / "finetune" / "stage.json").read_text())["init"] == str(pretrained)
    assert not (out / "vanilla-seed7" / "pretrain").exists()
    assert read_log(out / "dhnm-paper-rule-seed7" / "finetune" / "log.jsonl", "dhnm")  # mining checks ran
    assert not read_log(out / "vanilla-seed7" / "finetune" / "log.jsonl", "dhnm")

    # nothing replaced: each dynamic row has its static twin's weights, scored once, with the same scores
    assert "- DHNM (paper rule), seed 8: the same weights as vanilla, seed 8 (scored once)" in table
    assert "- CBB + DHNM, seed 7: the same weights as CBB only, seed 7 (scored once)" in table
    assert "- CBB + DHNM, seed 7: retrieval: 1 checks, 0 sets replaced (0 of 48 rows), 0 stale rows skipped, " \
           "0 false negatives dropped" in table
    assert result["scores"]["DHNM (paper rule)"] == result["scores"]["vanilla"]
    assert not list(out.glob("dhnm-paper-rule-seed*/eval"))

    done = [*out.glob("*-seed*/finetune/model/model.safetensors"), *out.rglob("eval.json")]
    stamps = {p: p.stat().st_mtime_ns for p in done}
    assert len(stamps) == 12 + 5  # 12 fine-tuned models; 4 distinct ones scored, and the pre-trained model
    assert main(["ablation", str(ablation_recipe), "--seeds", "2", "--output", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing re-trained or re-scored


def test_table_and_ordering_by_hand():
    def result(avg, retrieval):
        return {"avg": avg, "categories": {"Retrieval": retrieval}}

    scores = {"base": [result(0.5, 0.4)], "vanilla": [result(0.6, 0.5), result(0.62, 0.55)]}
    lines = ablation_table({k: [{"d": r} for r in v] for k, v in scores.items()}, "d")
    assert lines[0] == "| method | Retrieval | Avg |"
    assert lines[2] == "| base | 40.00 | 50.00 |"
    assert lines[3] == "| vanilla | 52.50 ± 3.54 | 61.00 ± 1.41 |"
    order = ordering_lines({"base": [0.5], "vanilla": [0.6, 0.62], "CBB only": [0.605, 0.6]}, "base")
    assert "- vanilla ≥ base: holds, +11.00" in order
    assert "- CBB only ≥ vanilla: reversed (inside the seeds' spread), -0.75" in order


def test_paired_interval_by_hand():
    # diffs 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.3027: 2 ± 4.3027 / sqrt(3) = 2 ± 2.4841
    mean, low, high = paired_interval([1.0, 2.0, 3.0])
    assert (mean, round(low, 4), round(high, 4)) == (2.0, -0.4841, 4.4841)
    assert paired_interval([0.5]) == (0.5, None, None)
    scores = {"vanilla": [{"d": {"avg": 0.60, "categories": {}}}, {"d": {"avg": 0.62, "categories": {}}}],
              "CBB only": [{"d": {"avg": 0.61, "categories": {}}}, {"d": {"avg": 0.64, "categories": {}}}]}
    lines = paired_table(scores, "d", "vanilla")
    # diffs 0.01, 0.02: mean 1.5, sd 0.7071, t(0.975, 1) = 12.706: 1.5 ± 6.35
    assert lines[2] == "| CBB only | +1.50 [-4.85, +7.85] |"


def test_bad_arguments(ablation_recipe, capsys):
    assert main(["ablation", str(ablation_recipe), "--seeds", "0"]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
    assert main(["ablation", str(ablation_recipe), "--rows", "vanilla,both"]) == 2
    assert "unknown ablation row 'both'" in capsys.readouterr().err

"""`conan-embed ablation`: one pre-training, four fine-tuning rows x seeds, a Table-3-style report."""

from __future__ import annotations

import json

import pytest
import yaml

from conan_embed.cli import main
from conan_embed.errors import InputError
from conan_embed.training.callbacks import read_log
from conan_embed.training.ablation import ROWS, ablation_table, ordering_lines, row_recipe
from conan_embed.training.config import load_recipe


@pytest.fixture
def ablation_recipe(recipe_dict, tmp_path):
    finetune = recipe_dict["stages"]["finetune"]
    finetune["max_steps"] = 4
    # the rows set the mode; at ratio 100 no set is ever exhausted, so a dynamic row trains as its static twin
    finetune["mining"] = {"check_every": 2, "ratio": 100}
    recipe_dict["eval"] = {"size": "tiny", "dims": [None], "tasks": ["Retrieval", "STS"]}
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(recipe_dict, sort_keys=False))
    return path


def test_rows_differ_only_in_composer_and_mining(ablation_recipe, tmp_path):
    recipe = load_recipe(ablation_recipe)
    rows = {row: row_recipe(recipe, row, 8, tmp_path / "pre", tmp_path / "out") for row in ROWS}
    stages = {row: r.stages["finetune"] for row, r in rows.items()}
    assert {row: (s.composer_config.name, s.mining.mode) for row, s in stages.items()} == ROWS
    assert all(list(r.stages) == ["finetune"] and r.seed == 8 and r.merge is None for r in rows.values())
    assert {s.init for s in stages.values()} == {str(tmp_path / "pre")}
    assert len({r.output_dir for r in rows.values()}) == 4
    assert all(s.mining.check_every == 2 and s.max_steps == 4 for s in stages.values())
    with pytest.raises(InputError, match="unknown ablation row 'both'"):
        row_recipe(recipe, "both", 8, tmp_path, tmp_path)


def test_ablation_writes_the_table_and_reuses_finished_work(ablation_recipe, tmp_path, capsys):
    out = tmp_path / "abl"
    assert main(["ablation", str(ablation_recipe), "--seeds", "2", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "ablation.json").read_text())
    assert result["seeds"] == [7, 8] and result["baseline"] == "pre-training only"
    assert {row: len(runs) for row, runs in result["scores"].items()} == {
        "pre-training only": 1, "vanilla": 2, "CBB only": 2, "DHNM only": 2, "CBB + DHNM": 2}
    table = (out / "ablation.md").read_text()
    for row in ["pre-training only", *ROWS]:
        assert f"| {row} |" in table
    assert "| method | Retrieval | STS | Avg |" in table and "## The paper's ordering (Avg)" in table
    assert "CBB + DHNM ≥ CBB only:" in table and table.strip() in printed  # the table is printed too
    assert (out / "ablation.png").stat().st_size > 10_000
    # every row fine-tuned the one pre-trained model, which trained once
    pretrained = out / "pretrained" / "pretrain" / "model"
    for run in out.glob("*-seed*"):
        assert json.loads((run / "finetune" / "stage.json").read_text())["init"] == str(pretrained)
    assert not (out / "vanilla-seed7" / "pretrain").exists()
    assert read_log(out / "dhnm-only-seed7" / "finetune" / "log.jsonl", "dhnm")  # mining checks ran
    assert not read_log(out / "vanilla-seed7" / "finetune" / "log.jsonl", "dhnm")

    # nothing replaced: each dynamic row has its static twin's weights, scored once, with the same scores
    assert "- DHNM only, seed 8: the same weights as vanilla, seed 8 (scored once)" in table
    assert "- CBB + DHNM, seed 7: the same weights as CBB only, seed 7 (scored once)" in table
    assert "- CBB + DHNM, seed 7: retrieval: 1 checks, 0 sets replaced" in table
    assert result["scores"]["DHNM only"] == result["scores"]["vanilla"]
    assert not list(out.glob("dhnm-only-seed*/eval"))

    done = [*out.glob("*-seed*/finetune/model/model.safetensors"), *out.rglob("eval.json")]
    stamps = {p: p.stat().st_mtime_ns for p in done}
    assert len(stamps) == 8 + 5  # 8 fine-tuned models; 4 distinct ones scored, and the pre-trained model
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


def test_bad_arguments(ablation_recipe, capsys):
    assert main(["ablation", str(ablation_recipe), "--seeds", "0"]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
    assert main(["ablation", str(ablation_recipe), "--rows", "vanilla,both"]) == 2
    assert "unknown ablation row 'both'" in capsys.readouterr().err

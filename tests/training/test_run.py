"""`conan-embed run`: data check -> stages -> evaluation -> run folder with report.md and metrics.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from conan_embed.cli import main
from conan_embed.recipe.schema import load_recipe


def test_run_writes_the_run_folder(recipe_dict, tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    recipe_dict["description"] = "A tiny test recipe."
    # curate the weak pairs first (the tiny base model as teacher), pre-train on the kept shards
    recipe_dict["curate"] = {"input": ["pretrain/weak_pairs.jsonl"], "output": str(tmp_path / "curated"),
                             "executor": {"workers": 1}, "stages": {"teacher": {
                                 "model": recipe_dict["model"]["base"], "percentile": 10}}}
    recipe_dict["stages"]["pretrain"]["tasks"]["weak"]["file"] = str(tmp_path / "curated" / "kept")
    # merge the two stages (the base is a bare encoder: another architecture) with few-shot weights
    recipe_dict["merge"] = {"models": ["finetune", "pretrain"], "examples_per_task": 2}
    path.write_text(yaml.safe_dump(recipe_dict, sort_keys=False))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["base_model"] == recipe_dict["model"]["base"]
    assert set(metrics["eval"]) == {"base", "pretrain", "finetune", "merged"}
    weights = metrics["merge"]["weights"]
    assert list(weights) == ["finetune", "pretrain"] and abs(sum(weights.values()) - 1) < 1e-9
    assert json.loads((run / "model" / "merge.json").read_text())["weights"] == weights  # the final model
    for label, by_dim in metrics["eval"].items():
        assert set(by_dim) == {"dim-full", "dim-16"}
        # the base is the bare encoder (hidden 32); the stages add the recipe's 48-d head
        assert by_dim["dim-full"]["embedding_dim"] == (32 if label == "base" else 48)
        assert by_dim["dim-16"]["embedding_dim"] == 16
        assert set(by_dim["dim-full"]["categories"]) == {"Retrieval", "Reranking", "STS", "PairClassification",
                                                          "Classification", "Clustering"}
    report = (run / "report.md").read_text()
    curation = metrics["curation"]
    assert curation["rows_in"] == 48 and curation["table"][-1]["stage"] == "teacher"
    assert metrics["stages"]["pretrain"]["tasks"]["weak"]["rows"] == curation["kept"] < 48
    assert "## Data curation" in report and f"| **total** | **48** | **{curation['kept']}** |" in report
    assert "A tiny test recipe." in report and "| **Avg** (weighted by datasets) |" in report
    assert "## Merge" in report and f"{weights['finetune']:.3f} × `finetune`" in report
    assert "- [x] data curation: 48 -> " in report and "- [x] model merging (LM-Cocktail)" in report
    assert "- [ ] dynamic hard-negative mining" in report and "- [ ] hard-negative mining with a model: no" in report
    assert "### Forgetting check" in report and "| PeoplesDailyTitleRetrieval |" in report
    assert report.count("| Retrieval (ndcg_at_10) |") == 2  # full dim and 16
    avg = metrics["eval"]["merged"]["dim-full"]["avg"]
    assert f"{100 * avg:.2f}" in report and "Run report: tiny" in out
    for name in ("loss.png", "recipe.yaml", "pretrain/loss.png", "finetune/log.jsonl", "model/modules.json",
                 "eval/finetune/dim-16/eval.json"):
        assert (run / name).is_file(), name
    assert load_recipe(run / "recipe.yaml").stages == load_recipe(path).stages  # the recipe as run loads again

    # the final model loads with plain sentence-transformers, truncated, without conan_embed
    code = ("import sys; from sentence_transformers import SentenceTransformer;"
            f"m = SentenceTransformer({str(run / 'model')!r}, truncate_dim=16);"
            "e = m.encode(['保险'], prompt_name='query');"
            "assert e.shape == (1, 16), e.shape; assert 'conan_embed' not in sys.modules; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]

    # a second run refuses to clobber; --resume reuses every stage and evaluation
    assert main(["run", str(path)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["run", str(path), "--resume"]) == 0
    again = json.loads((run / "metrics.json").read_text())
    assert again["eval"] == metrics["eval"] and again["stages"] == metrics["stages"]
    assert again["merge"] == metrics["merge"]


def test_data_of_an_older_builder_is_refused(recipe_dict, tmp_path):
    import pytest

    from conan_embed.errors import InputError
    from conan_embed.recipe.recipe_steps import prepare_data
    from conan_embed.recipe.schema import recipe_from_dict

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text(json.dumps({"builder_version": 1}))
    recipe_dict["data"] = {"dir": str(tmp_path / "old"), "build": True}
    with pytest.raises(InputError, match=r"manifest.json: built by builder version 1.*evaluation articles changed.*delete"):
        prepare_data(recipe_from_dict(recipe_dict))


def test_run_scoring_the_guard_tasks_alone(recipe_dict, tmp_path, capsys):
    recipe_dict["stages"] = {"pretrain": {**recipe_dict["stages"]["pretrain"], "max_steps": 2}}
    recipe_dict["eval"] = {"size": "tiny", "dims": [None], "tasks": ["guard"]}
    path = tmp_path / "guard.yaml"
    path.write_text(yaml.safe_dump(recipe_dict, sort_keys=False))
    assert main(["run", str(path)]) == 0
    run = tmp_path / "run"
    scores = json.loads((run / "metrics.json").read_text())["eval"]["pretrain"]["dim-full"]
    assert scores["categories"] == {} and scores["avg"] is None
    assert set(scores["guard"]) == {"PeoplesDailyTitleRetrieval", "PeoplesDailySentenceRetrieval"}
    report = (run / "report.md").read_text()
    assert "PeoplesDailyTitleRetrieval" in report and "**Avg**" not in report


def test_evaluations_are_cached_until_the_suite_size_changes(recipe_dict, tmp_path, monkeypatch):
    """eval/<label>/stamp.json holds the size's settings, not its name: a size whose settings changed
    (more classifier fits, say) is scored again, not read from an older cache."""
    import dataclasses

    import conan_embed.recipe.recipe_steps as runner
    from conan_embed.evaluation import sizes
    from conan_embed.recipe.recipe_steps import evaluate_model
    from conan_embed.recipe.schema import recipe_from_dict

    scored = []

    def fake_suite(model, *, output_dir, **kwargs):  # the caching is under test, not the suite
        scored.append(str(output_dir))
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "eval.json").write_text(json.dumps({"avg": 0.5}))
        return {"avg": 0.5}

    monkeypatch.setattr(runner, "run_suite", fake_suite)
    recipe_dict["eval"] = {"size": "tiny", "dims": [None]}
    recipe = recipe_from_dict(recipe_dict)
    base = Path(recipe_dict["model"]["base"])

    def evaluate():
        return evaluate_model("base", base, recipe, tmp_path / "run", resume=True)

    assert evaluate() == {None: {"avg": 0.5}} and len(scored) == 1
    assert evaluate() == {None: {"avg": 0.5}} and len(scored) == 1  # cached
    monkeypatch.setitem(sizes.SIZES, "tiny", dataclasses.replace(sizes.SIZES["tiny"], classification_experiments=3))
    evaluate()
    assert len(scored) == 2  # the same size name, other settings: scored again

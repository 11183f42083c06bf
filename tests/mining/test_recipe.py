"""`conan-embed run` with a mine step after pre-training and dynamic hard negatives in fine-tuning."""

from __future__ import annotations

import json

import pytest
import yaml

from conan_embed.cli import main
from conan_embed.data.records import read_records
from conan_embed.errors import InputError
from conan_embed.recipe.schema import recipe_from_dict


def test_run_mines_with_the_pretrained_model_then_mines_dynamically(recipe_dict, tmp_path):
    recipe_dict["mine"] = {"model": "pretrain", "input": "finetune/retrieval.jsonl", "corpus": "finetune/corpus.jsonl",
                           "relative_margin": None,  # a random tiny model scores every passage about alike
                           "output": str(tmp_path / "mined/retrieval.jsonl"), "top_k": 20,
                           "cache_dir": str(tmp_path / "cache")}
    finetune = recipe_dict["stages"]["finetune"]
    finetune["tasks"]["retrieval"].update(file=str(tmp_path / "mined/retrieval.jsonl"), max_rows=16)
    finetune.update(max_steps=10, mining={"mode": "dynamic", "check_every": 4, "ratio": 1.0, "max_score": 1.0})
    recipe_dict["eval"] = {"size": "tiny", "dims": [None], "tasks": ["Retrieval"]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_dict, sort_keys=False))
    assert main(["run", str(path)]) == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["mining"]["rows"] == 48 and metrics["mining"]["model"].endswith("pretrain/model")
    assert all(len(r["candidates"]) == 20 for r in read_records(tmp_path / "mined/retrieval.jsonl"))
    mined = metrics["stages"]["finetune"]["mining"]["retrieval"]
    assert metrics["stages"]["finetune"]["negatives"] == "dynamic" and mined["checks"] == 2 and mined["rows"] == 16
    report = (run / "report.md").read_text()
    assert "## Candidate mining" in report and "**dynamic** hard negatives: 2 checks" in report
    replaced = mined["replaced"]
    assert "- [x] hard-negative mining with a model (`" in report and "- [ ] cross-GPU batch balance" in report
    assert f"- [x] dynamic hard-negative mining in `finetune/retrieval`: 2 checks, {replaced:,} sets replaced" in report
    assert "`pretrain` /" not in report  # the pre-training task has no hard negatives
    assert (run / "finetune" / "negatives.png").is_file() and set(metrics["eval"]["finetune"]["dim-full"]["categories"]) == {"Retrieval"}


def test_a_stage_cannot_read_what_is_mined_after_it(recipe_dict):
    recipe_dict["mine"] = {"model": "finetune", "output": "finetune/retrieval.jsonl"}
    with pytest.raises(InputError, match="stages.finetune.tasks.retrieval reads 'finetune/retrieval.jsonl', which "
                                         "mine writes only after stage 'finetune'"):
        recipe_from_dict(recipe_dict)
    recipe_dict["mine"] = {"model": "pretrain", "top_k": 0}
    with pytest.raises(InputError, match="mine.top_k must be > 0"):
        recipe_from_dict(recipe_dict)

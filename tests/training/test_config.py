"""Recipe loading: the shipped recipes load; bad keys, types and files fail naming them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conan_embed.errors import InputError
from conan_embed.recipe.recipe_steps import check_data_files
from conan_embed.recipe.schema import load_recipe, recipe_from_dict
from conan_embed.training.training_tasks import TrainingTask

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_quickstart_recipe_loads():
    r = load_recipe(RECIPES / "quickstart.yaml")
    assert list(r.stages) == ["pretrain", "finetune"]
    assert r.model.base == "e5-small" and r.model.max_length["passage"] <= 128
    assert r.stages["finetune"].tasks["retrieval"].negatives.skip_top == 10
    assert all(s.precision == "bf16" for s in r.stages.values())
    assert r.eval.size == "quick" and r.eval.dims == [None, 256]
    assert r.stages["finetune"].mining.rule == "loss-weight"  # the paper's replaces nothing here (docs/mining.md)
    assert r.merge.models == ["finetune", "pretrain", "model"] and sum(r.merge.weights) == 1


def test_conan_v1_recipe_has_the_paper_settings():
    r = load_recipe(RECIPES / "conan-v1.yaml")
    assert r.model.out_dim == 1792 and r.model.pooling == "cls"
    assert r.model.matryoshka_dims == [256, 512, 768, 1024, 1280, 1536, 1792]
    assert r.model.max_length["passage"] == 512
    ft = r.stages["finetune"]
    assert ft.tasks["retrieval"].batch_size == 4 and ft.tasks["sts"].batch_size == 32
    assert ft.optim.lr == 1e-5 and ft.optim.warmup == 0.05 and ft.optim.weight_decay == 0.001
    ds = (RECIPES / ft.deepspeed)
    assert ds.is_file() and yaml.safe_load(ds.read_text())["zero_optimization"]["stage"] == 1
    m = ft.mining
    assert (m.mode, m.check_every, m.ratio, m.max_score, m.absolute, m.min_initial) == ("dynamic", 100, 1.15, 0.8, True, None)
    assert r.mine.model == "pretrain" and ft.tasks["retrieval"].file == r.mine.output and r.mine.top_k == 200
    assert ft.composer_config.name == "cbb" and ft.composer_config.beta == 0.8 and ft.composer_config.sts_ranks == 1
    assert not ft.tasks["classification"].loss.in_batch


def test_dhnm_demo_recipes_load():
    v1, v2 = load_recipe(RECIPES / "dhnm-demo.yaml"), load_recipe(RECIPES / "dhnm-demo-v2.yaml")
    assert v1.stages["finetune"].mining.ratio == 1.15 and v1.stages["finetune"].tasks["retrieval"].max_rows == 256
    m = v2.stages["finetune"].mining
    assert (m.check_every, m.ratio, m.max_score, m.absolute, m.min_initial) == (1, 1.2, 0.7, False, 0.4)
    assert v1.stages["finetune"].tasks == v2.stages["finetune"].tasks and v1.eval == v2.eval


@pytest.mark.parametrize("edit, key", [
    (lambda d: d["stages"]["pretrain"].update(max_stesp=3), "stages.pretrain.max_stesp"),
    (lambda d: d["stages"]["finetune"]["tasks"]["retrieval"].update(bach_size=3),
     "stages.finetune.tasks.retrieval.bach_size"),
    (lambda d: d.update(evals={}), "evals"),
    (lambda d: d["model"].update(max_length={"query": 8, "doc": 8}), "model.max_length.doc"),
    (lambda d: d["stages"]["finetune"]["tasks"]["sts"].update(max_length={"doc": 8}),
     "stages.finetune.tasks.sts.max_length.doc"),
])
def test_unknown_key_is_named(recipe_dict, edit, key):
    edit(recipe_dict)
    with pytest.raises(InputError, match="unknown key") as err:
        recipe_from_dict(recipe_dict, source="r.yaml")
    assert key in str(err.value) and "r.yaml" in str(err.value)


@pytest.mark.parametrize("edit, key, what", [
    (lambda d: d["stages"]["pretrain"].update(max_steps="ten"), "stages.pretrain.max_steps", "an integer"),
    (lambda d: d["stages"]["pretrain"]["optim"].update(lr="fast"), "stages.pretrain.optim.lr", "a number"),
    (lambda d: d["stages"]["pretrain"].update(precision="fp8"), "stages.pretrain.precision", "one of"),
    (lambda d: d["model"].update(matryoshka_dims=[16, "32"]), "model.matryoshka_dims[1]", "an integer"),
    (lambda d: d["stages"]["pretrain"].update(tasks=[]), "stages.pretrain.tasks", "a mapping"),
    (lambda d: d["stages"]["pretrain"].update(max_steps=0), "stages.pretrain.max_steps", "> 0"),
    (lambda d: d["stages"]["finetune"]["tasks"]["retrieval"].update(max_length={"passage": 0}),
     "stages.finetune.tasks.retrieval.max_length.passage", "> 0"),
    (lambda d: d["stages"]["pretrain"]["checkpoint"].update(keep=1), "stages.pretrain.checkpoint.keep", ">= 2"),
    (lambda d: d["stages"]["finetune"]["tasks"]["retrieval"].update(loss={"weight": 0}),
     "stages.finetune.tasks.retrieval.loss.weight", "> 0"),
    (lambda d: d["stages"]["finetune"]["tasks"]["retrieval"].update(loss={"temperature": float("nan")}),
     "stages.finetune.tasks.retrieval.loss.temperature", "> 0"),
    (lambda d: d["stages"]["finetune"]["tasks"]["sts"]["loss"].update(name="infonce"),
     "stages.finetune.tasks.sts.loss.name", "cosent"),
    (lambda d: d["stages"]["finetune"]["tasks"]["retrieval"].update(loss={"name": "focal"}),
     "stages.finetune.tasks.retrieval.loss.name", "unknown loss 'focal'; known: cosent, infonce"),
    (lambda d: d["stages"]["finetune"]["tasks"]["retrieval"].update(loss={"name": "cbb"}),
     "stages.finetune.tasks.retrieval.loss.name", "chosen by `composer: cbb`"),
    (lambda d: d["stages"]["finetune"].update(init="nowhere"), "stages.finetune.init", "earlier stage"),
    (lambda d: d["stages"]["pretrain"].update(deepspeed="missing_ds.json"), "stages.pretrain.deepspeed",
     "no such file"),
    (lambda d: d.pop("name"), "name", "missing required key"),
    (lambda d: d.update(merge={"models": ["finetune", "nope"]}), "merge.models", "neither 'model'"),
    (lambda d: d.update(merge={"models": ["finetune"]}), "merge.models", "two or more"),
    (lambda d: d.update(merge={"models": ["finetune", "model"], "weights": [1]}), "merge.weights", "one weight"),
    (lambda d: d.update(merge={"models": ["finetune", "model"], "temperature": 0}), "merge.temperature", "> 0"),
    (lambda d: d["eval"].update(models=["base", "merged"]), "eval.models", "not one of base, pretrain, finetune"),
    (lambda d: d["eval"].update(models=["finetune"]), "eval.models", "must include 'base'"),
])
def test_bad_value_is_named(recipe_dict, edit, key, what):
    edit(recipe_dict)
    with pytest.raises(InputError, match=what) as err:
        recipe_from_dict(recipe_dict)
    assert key in str(err.value)


def test_missing_data_file_is_named_before_training(recipe_dict):
    recipe_dict["stages"]["finetune"]["tasks"]["sts"]["file"] = "finetune/nope.jsonl"
    recipe = recipe_from_dict(recipe_dict)
    with pytest.raises(InputError, match="no such data file") as err:
        check_data_files(recipe)
    assert "stages.finetune.tasks.sts.file" in str(err.value) and "nope.jsonl" in str(err.value)


def test_bad_rows_are_named(recipe_dict, train_data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = (train_data / "finetune/sts.jsonl").read_text().splitlines()
    lines[3] = lines[3].replace('"score"', '"scroe"')
    bad.write_text("\n".join(lines) + "\n")
    recipe = recipe_from_dict(recipe_dict)
    cfg = recipe.stages["finetune"].tasks["sts"]
    cfg.file = str(bad)
    with pytest.raises(InputError, match="missing field 'score'") as err:
        TrainingTask("sts", cfg, train_data)
    assert "bad.jsonl" in str(err.value) and "row 4" in str(err.value)


def test_overrides_and_yaml_errors(tmp_path, recipe_dict):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_dict, sort_keys=False))
    r = load_recipe(path, ["stages.pretrain.max_steps=2", "stages.finetune.optim.lr=3e-4"])
    assert r.stages["pretrain"].max_steps == 2 and r.stages["finetune"].optim.lr == 3e-4
    with pytest.raises(InputError, match="unknown key 'stages.pretrain.bogus'"):
        load_recipe(path, ["stages.pretrain.bogus=1"])
    with pytest.raises(InputError, match="KEY=VALUE"):
        load_recipe(path, ["stages.pretrain.max_steps"])
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_recipe(tmp_path / "broken.yaml")
    with pytest.raises(InputError, match="no such recipe file"):
        load_recipe(tmp_path / "absent.yaml")

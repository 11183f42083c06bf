"""One prompt lookup: a model with both a "document" and a "passage" prompt gets the same passage prompt
in training, serving, teacher scoring and mining."""

from __future__ import annotations

import json

from transformers import TrainerCallback

from conan_embed.modeling import text_prompt

PROMPTS = {"query": "q: ", "document": "d: ", "passage": "p: "}


def test_every_component_uses_the_document_prompt(train_bert, train_data, recipe_dict, tmp_path):
    from conan_embed.curate.curate_config import TeacherConfig
    from conan_embed.curate.teacher import TeacherScorer
    from conan_embed.mining import MineConfig, mine
    from conan_embed.modeling import build_embedder, save_embedder
    from conan_embed.serving.engine import EmbeddingEngine
    from conan_embed.recipe.schema import recipe_from_dict
    from conan_embed.recipe.stage_training import train_stage

    assert text_prompt(PROMPTS, "passage") == "d: " and text_prompt({"passage": "p: "}, "passage") == "p: "
    assert text_prompt(PROMPTS, "query") == "q: " and text_prompt(None, "passage") is None
    folder = save_embedder(build_embedder(train_bert, pooling="mean", out_dim=None, dims=(), prompts=PROMPTS),
                           tmp_path / "model")

    engine = EmbeddingEngine(str(folder), device="cpu", pass_overhead_tokens=8)
    engine.load()
    assert engine.prompt("passage") == "d: " and engine.prompt("query") == "q: "
    assert TeacherScorer(TeacherConfig(model=str(folder), device="cpu")).prompts == {"query": "q: ", "passage": "d: "}

    mine(folder, train_data / "finetune/retrieval.jsonl", train_data / "finetune/corpus.jsonl",
         tmp_path / "mined.jsonl",
         MineConfig(top_k=5, cache_dir=str(tmp_path / "cache"), relative_margin=None), show_progress=False)
    keys = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*/key.json")]
    assert {k["kind"]: k["prompt"] for k in keys} == {"passage": "d: ", "query": "q: "}

    class Prompts(TrainerCallback):
        seen = set()

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            preprocess = model.preprocess

            def spy(texts, prompt=None, **kw):
                if "max_length" in kw:
                    self.seen.add(prompt)
                return preprocess(texts, prompt=prompt, **kw)
            model.preprocess = spy

    stage = dict(recipe_dict["stages"]["finetune"], init=str(folder), max_steps=2)
    recipe = recipe_from_dict(dict(recipe_dict, stages={"finetune": stage}))
    train_stage(recipe, "finetune", show_progress=False, callbacks=[Prompts()])
    assert Prompts.seen == {"q: ", "d: "}

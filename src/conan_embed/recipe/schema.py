"""Typed recipes: a YAML file becomes nested dataclasses, or an InputError that names the key.

A recipe (recipes/*.yaml, docs/training.md) holds everything a run needs: the base model, the data
folder, one section per training stage and the evaluation. Loading is strict on purpose: an unknown
key is a typo that would otherwise silently fall back to a default, and a wrong type should fail
before an hour of training rather than in the middle of it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from conan_embed.curate.curate_config import RecipeCurateConfig, check_curate_config
from conan_embed.errors import InputError
from conan_embed.losses.registry import LOSSES
from conan_embed.mining.mining_config import MiningConfig, RecipeMineConfig, check_margins, check_mine_config
from conan_embed.training.training_config import TEXT_FIELDS, ComposerConfig, OptimConfig, TaskConfig
from conan_embed.typed_config import build_dataclass, set_override


@dataclass
class CheckpointConfig:
    every: int = 500  # steps; a checkpoint is also written at the last step
    keep: int = 2  # at least 2, so that rotation never deletes the only complete one


@dataclass
class LogConfig:
    every: int = 1  # steps between log.jsonl lines
    tensorboard: bool = True


@dataclass
class StageConfig:
    max_steps: int
    tasks: dict[str, TaskConfig]
    init: str = "model"  # "model" (the recipe's model section), an earlier stage's name, or a model folder
    composer: ComposerConfig | Literal["sequential", "cbb"] = "sequential"  # a name: that composer's defaults
    mining: MiningConfig = field(default_factory=MiningConfig)
    max_length: dict[str, int] = field(default_factory=dict)  # overrides model.max_length for this stage
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    grad_accum: int = 1
    activation_checkpointing: bool = False
    # texts run packed, without padding, where the model allows it (conan_embed.padding_free): the same
    # embeddings and gradients for less work; false: padded batches
    padding_free: bool = True
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    deepspeed: str | None = None  # a DeepSpeed JSON config, relative to the recipe file

    @property
    def composer_config(self) -> ComposerConfig:
        return ComposerConfig(name=self.composer) if isinstance(self.composer, str) else self.composer


@dataclass
class ModelConfig:
    base: str = "e5-small"  # a shipped model name, a model folder or a hub id
    pooling: Literal["cls", "mean"] = "cls"
    out_dim: int | None = 1792  # None: no linear head, the encoder's hidden size is the output
    matryoshka_dims: list[int] = field(default_factory=lambda: [256, 512, 768, 1024, 1280, 1536, 1792])
    max_length: dict[str, int] = field(default_factory=lambda: {"query": 64, "passage": 512})
    prompts: dict[str, str] | None = None  # None: the base model's own prompts (e5: query/passage)


@dataclass
class DataConfig:
    dir: str = "data"
    build: bool = True  # run build-data into `dir` when it has no manifest.json


@dataclass
class EvalConfig:
    suite: Literal["local", "cmteb"] = "local"  # cmteb: the real C-MTEB datasets (docs/evaluation.md)
    data_dir: str | None = None  # cmteb: one folder per dataset repo (else the Hugging Face cache or the hub)
    size: Literal["quick", "full", "tiny"] = "quick"  # local suite
    split: Literal["test", "valid"] = "test"  # local suite; valid: choose settings without looking at test
    dims: list[int | None] = field(default_factory=lambda: [None, 256])  # None = the full dim
    precision: Literal["fp32", "bf16"] = "fp32"
    batch_size: int = 32
    enabled: bool = True
    tasks: list[str] | None = None  # suite tasks or categories (None: all six and the guard tasks)
    models: list[str] | None = None  # which of base, the stages and merged to evaluate (None: all)


@dataclass
class MergeConfig:
    """The recipe's `merge:` step after the last stage (LM-Cocktail; docs/forgetting.md): the models
    ("model" = the base, or stage names; the first one's modules, tokenizer and prompts are kept)
    averaged with `weights`, or with few-shot weights softmax(-loss / temperature) when none are given.
    The merged model becomes the run's final model."""

    models: list[str] = field(default_factory=lambda: ["finetune", "model"])
    weights: list[float] | None = None
    examples_per_task: int = 5
    temperature: float = 5.0


@dataclass
class Recipe:
    name: str
    stages: dict[str, StageConfig]
    description: str = ""  # what this recipe shrinks or changes, and why; printed in report.md
    seed: int = 42
    output_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    curate: RecipeCurateConfig | None = None  # curate raw pairs into data.dir before the stages
    mine: RecipeMineConfig | None = None  # rank a corpus for retrieval rows (after the stage `mine.model` names)
    merge: MergeConfig | None = None  # average the final stage with the base (and other stages) after training
    source: str | None = None  # the recipe file (set by load_recipe; relative paths in it resolve there)

    def stage(self, name: str) -> StageConfig:
        if name not in self.stages:
            raise InputError(f"recipe {self.name!r} has no stage {name!r}; it has: {', '.join(self.stages)}",
                             path=self.source, field="stages")
        return self.stages[name]

    def data_file(self, relative: str) -> Path:
        return Path(self.data.dir) / relative

    def max_length(self, stage: StageConfig) -> dict[str, int]:
        return {**self.model.max_length, **stage.max_length}


def _positive(value, key: str, source, *, allow_zero: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise InputError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value}", path=source, field=key)


def _check_text_fields(lengths: dict, key: str, source) -> None:
    for name, cap in lengths.items():
        if name not in TEXT_FIELDS:
            raise InputError(f"unknown key '{key}.{name}'; known: {', '.join(TEXT_FIELDS)}", path=source,
                             field=f"{key}.{name}")
        _positive(cap, f"{key}.{name}", source)


def _validate(recipe: Recipe) -> None:
    src = recipe.source
    if not recipe.stages:
        raise InputError("a recipe needs at least one stage under 'stages'", path=src, field="stages")
    _check_text_fields(recipe.model.max_length, "model.max_length", src)
    if recipe.eval.tasks is not None:
        from conan_embed.evaluation.cmteb_tasks import plan_tasks
        from conan_embed.evaluation.suite import select_tasks

        try:
            (plan_tasks if recipe.eval.suite == "cmteb" else select_tasks)(recipe.eval.tasks)
        except InputError as exc:
            raise InputError(str(exc), path=src, field="eval.tasks") from None
    if recipe.mine is not None:
        _check_mine_step(recipe)
    if recipe.merge is not None:
        _check_merge_step(recipe)
    if recipe.eval.models is not None:
        known = ["base", *recipe.stages] + (["merged"] if recipe.merge is not None else [])
        for name in recipe.eval.models:
            if name not in known:
                raise InputError(f"eval.models: {name!r} is not one of {', '.join(known)}", path=src,
                                 field="eval.models")
        if "base" not in recipe.eval.models:
            raise InputError("eval.models must include 'base': every report and forgetting check compares with it",
                             path=src, field="eval.models")
    if recipe.curate is not None:
        recipe.curate.source = src
        check_curate_config(recipe.curate, "curate.")
        if not recipe.curate.input:
            raise InputError("curate.input lists no files", path=src, field="curate.input")
    seen = []
    for name, stage in recipe.stages.items():
        p = f"stages.{name}"
        _positive(stage.max_steps, f"{p}.max_steps", src)
        _positive(stage.grad_accum, f"{p}.grad_accum", src)
        _positive(stage.optim.lr, f"{p}.optim.lr", src)
        _positive(stage.checkpoint.every, f"{p}.checkpoint.every", src)
        _positive(stage.log.every, f"{p}.log.every", src)
        if not 0 <= stage.optim.warmup < 1:
            raise InputError(f"{p}.optim.warmup is a fraction of the steps in [0, 1), got {stage.optim.warmup}",
                             path=src, field=f"{p}.optim.warmup")
        if stage.checkpoint.keep < 2:
            raise InputError(f"{p}.checkpoint.keep must be >= 2 (rotation runs before a new checkpoint is "
                             f"complete), got {stage.checkpoint.keep}", path=src, field=f"{p}.checkpoint.keep")
        _check_text_fields(stage.max_length, f"{p}.max_length", src)
        if stage.init != "model" and stage.init not in seen and not Path(stage.init).exists():
            raise InputError(f"{p}.init must be 'model', an earlier stage ({', '.join(seen) or 'none'}) or an "
                             f"existing model folder, got {stage.init!r}", path=src, field=f"{p}.init")
        if not stage.tasks:
            raise InputError(f"{p}.tasks is empty", path=src, field=f"{p}.tasks")
        _check_mining(stage, p, src)
        _check_composer(stage, p, src)
        for tname, task in stage.tasks.items():
            t = f"{p}.tasks.{tname}"
            _positive(task.batch_size, f"{t}.batch_size", src)
            _check_text_fields(task.max_length, f"{t}.max_length", src)
            if task.max_rows is not None:
                _positive(task.max_rows, f"{t}.max_rows", src)
            _positive(task.negatives.count, f"{t}.negatives.count", src)
            _positive(task.negatives.skip_top, f"{t}.negatives.skip_top", src, allow_zero=True)
            _positive(task.loss.temperature, f"{t}.loss.temperature", src)
            _positive(task.loss.weight, f"{t}.loss.weight", src)
            if task.loss.mini_batch_size is not None:
                _positive(task.loss.mini_batch_size, f"{t}.loss.mini_batch_size", src)
            if task.loss.in_batch == "global" and stage.composer_config.name == "cbb":
                raise InputError(f"{t}.loss.in_batch: 'global' does not combine with the cbb composer, whose "
                                 f"retrieval ranks hold the same rows (their negatives are already shared); use "
                                 f"true or 'local'", path=src, field=f"{t}.loss.in_batch")
            _check_loss_name(task, t, src)
        if stage.deepspeed is not None and not resolve_relative(recipe, stage.deepspeed).is_file():
            raise InputError(f"{p}.deepspeed: no such file {resolve_relative(recipe, stage.deepspeed)}",
                             path=src, field=f"{p}.deepspeed")
        seen.append(name)


def _check_loss_name(task: TaskConfig, key: str, src) -> None:
    """A registered loss (conan_embed.losses.LOSSES). The shipped ones fit one kind of task: CoSENT the
    STS pairs with labels, InfoNCE pairs and retrieval; "cbb" is the composer's to choose."""
    name, field_ = task.loss.name, f"{key}.loss.name"
    if name not in LOSSES or name == "cbb":
        known = ", ".join(sorted(n for n in LOSSES if n != "cbb"))
        raise InputError(f"{field_}: unknown loss {name!r}; known: {known} (cbb is chosen by `composer: cbb`)",
                         path=src, field=field_)
    shipped = {"infonce": ("pairs", "retrieval"), "cosent": ("sts",)}
    if name in shipped and task.kind not in shipped[name]:
        expected = "cosent" if task.kind == "sts" else "infonce"
        raise InputError(f"{field_}: a {task.kind} task trains with {expected!r}, got {name!r}", path=src, field=field_)


def _check_merge_step(recipe: Recipe) -> None:
    m, src = recipe.merge, recipe.source
    known = ["model", *recipe.stages]
    if len(m.models) < 2 or len(set(m.models)) != len(m.models):
        raise InputError(f"merge.models needs two or more different models, got {m.models}", path=src,
                         field="merge.models")
    for name in m.models:
        if name not in known:
            raise InputError(f"merge.models: {name!r} is neither 'model' (the base) nor a stage ({', '.join(known[1:])})",
                             path=src, field="merge.models")
    if m.weights is not None:
        from conan_embed.merging import check_weights

        try:
            check_weights(m.weights, len(m.models))
        except InputError as exc:
            raise InputError(str(exc), path=src, field="merge.weights") from None
    _positive(m.examples_per_task, "merge.examples_per_task", src)
    _positive(m.temperature, "merge.temperature", src)


def _check_mine_step(recipe: Recipe) -> None:
    """The mined file may only be read by stages after the one whose model mines it."""
    m, src = recipe.mine, recipe.source
    check_mine_config(m, "mine.", src)
    names = list(recipe.stages)
    before = names[: names.index(m.model) + 1] if m.model in recipe.stages else []
    for name in before:
        for tname, task in recipe.stages[name].tasks.items():
            if task.file == m.output:
                raise InputError(f"stages.{name}.tasks.{tname} reads {m.output!r}, which mine writes only after stage "
                                 f"{m.model!r}", path=src, field=f"stages.{name}.tasks.{tname}.file")


def _check_composer(stage: StageConfig, p: str, src) -> None:
    c, key = stage.composer_config, f"{p}.composer"
    if c.name != "cbb":
        return
    if c.retrieval_ranks is not None:
        _positive(c.retrieval_ranks, f"{key}.retrieval_ranks", src)
    _positive(c.sts_ranks, f"{key}.sts_ranks", src, allow_zero=True)
    _positive(c.beta, f"{key}.beta", src, allow_zero=True)
    kinds = {t.kind for t in stage.tasks.values()}
    if "pairs" in kinds or "retrieval" not in kinds:
        raise InputError(f"{key}: cbb trains retrieval (and STS) tasks together; this stage has "
                         f"{', '.join(f'{n} ({t.kind})' for n, t in stage.tasks.items())}", path=src, field=f"{key}.name")
    if "sts" in kinds and c.sts_ranks == 0:
        raise InputError(f"{key}.sts_ranks is 0 but the stage has an STS task", path=src, field=f"{key}.sts_ranks")
    n = c.retrieval_ranks or 1
    for name, task in stage.tasks.items():
        if task.kind == "retrieval" and task.negatives.count % n:
            raise InputError(f"{p}.tasks.{name}.negatives.count {task.negatives.count} does not split into "
                             f"{n} retrieval ranks: each row's hard negatives are shared out equally",
                             path=src, field=f"{p}.tasks.{name}.negatives.count")


def _check_mining(stage: StageConfig, p: str, src) -> None:
    m, key = stage.mining, f"{p}.mining"
    _positive(m.check_every, f"{key}.check_every", src)
    _positive(m.ratio, f"{key}.ratio", src)
    _positive(m.max_score, f"{key}.max_score", src)
    _positive(m.batch_size, f"{key}.batch_size", src)
    if not m.weight_drop > 1:
        raise InputError(f"{key}.weight_drop must be > 1, got {m.weight_drop}", path=src, field=f"{key}.weight_drop")
    check_margins(m, key, src)
    for name in m.tasks or []:
        if name not in stage.tasks or stage.tasks[name].kind != "retrieval":
            retrieval = [t for t, c in stage.tasks.items() if c.kind == "retrieval"]
            raise InputError(f"{key}.tasks names {name!r}, which is not a retrieval task of this stage "
                             f"(retrieval tasks: {', '.join(retrieval) or 'none'})", path=src, field=f"{key}.tasks")
    if m.mode == "dynamic" and not any(c.kind == "retrieval" for c in stage.tasks.values()):
        raise InputError(f"{key}.mode is dynamic but the stage has no retrieval task", path=src, field=f"{key}.mode")


def resolve_relative(recipe: Recipe, path: str) -> Path:
    """A path named in the recipe: absolute, or relative to the recipe file's folder."""
    p = Path(path)
    if p.is_absolute() or recipe.source is None:
        return p
    return Path(recipe.source).parent / p


def recipe_from_dict(data: dict, source=None) -> Recipe:
    if not isinstance(data, dict):
        raise InputError(f"a recipe is a YAML mapping, got {type(data).__name__}", path=source)
    recipe = build_dataclass(Recipe, data, "", source)
    recipe.source = str(source) if source is not None else None
    _validate(recipe)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise InputError("no such recipe file", path=path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML: {exc}", path=path) from exc
    data = copy.deepcopy(data) if data is not None else {}
    for assignment in overrides:
        set_override(data, assignment, source=path)
    return recipe_from_dict(data, source=path)

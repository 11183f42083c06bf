"""Run one training stage of a recipe: model in, model folder out, resumable at every checkpoint.

Layout of ``<output_dir>/<stage>/``::

    checkpoints/checkpoint-N/   HF checkpoint (a loadable model folder + optimizer, scheduler, RNG, trainer
                                state) and conan_checkpoint.json, written last
    model/                      the stage's final model (a sentence-transformers folder)
    log.jsonl                   one line per logged step; loss.png; tensorboard/
    stage.json                  summary, written last: its presence means the stage is complete
"""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from conan_embed.errors import InputError
from conan_embed.files import content_digest, write_json
from conan_embed.mining.dynamic import DynamicHardNegativeMiner
from conan_embed.model_loading import load_embedder, resolve_model
from conan_embed.modeling import build_embedder, matryoshka_dims, save_embedder
from conan_embed.training.composers import build_composer
from conan_embed.training.callbacks import (SaveFinalCheckpoint, StopAfterStep, TrainingMonitor, read_log,
                                            truncate_log)
from conan_embed.recipe.fingerprint import changed_keys, stage_fingerprint
from conan_embed.recipe.schema import Recipe, StageConfig, resolve_relative
from conan_embed.training.checkpoint import last_complete_checkpoint, read_marker
from conan_embed.training.launch import barrier, init_from_launch, launched_rank_and_world
from conan_embed.training.training_tasks import load_tasks
from conan_embed.training.trainer import ConanLoss, ConanTrainer

STAGE_SUMMARY = "stage.json"


@dataclass
class StagePaths:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / STAGE_SUMMARY


def stage_paths(recipe: Recipe, name: str) -> StagePaths:
    return StagePaths(Path(recipe.output_dir) / name)


def read_summary(paths: StagePaths) -> dict | None:
    return json.loads(paths.summary.read_text()) if paths.summary.is_file() else None


def _base_prompts(path) -> dict[str, str]:
    conf = Path(path) / "config_sentence_transformers.json"
    if conf.is_file():
        return {k: v for k, v in (json.loads(conf.read_text()).get("prompts") or {}).items() if v}
    return {}


def _base_max_length(path) -> int | None:
    """The base folder's sentence-transformers length limit, if it is one (None: let the tokenizer decide)."""
    conf = Path(path) / "sentence_bert_config.json"
    return json.loads(conf.read_text()).get("max_seq_length") if conf.is_file() else None


def init_model_path(recipe: Recipe, name: str) -> Path | str:
    """Where stage `name` starts from: the recipe's base model, an earlier stage's model, or a folder."""
    init = recipe.stage(name).init
    if init == "model":
        return resolve_model(recipe.model.base).location
    if init in recipe.stages:
        earlier = stage_paths(recipe, init)
        if read_summary(earlier) is None:
            raise InputError(f"stage {name!r} starts from stage {init!r}, which has not finished "
                             f"(no {earlier.summary}); run it first", path=recipe.source, field=f"stages.{name}.init")
        return earlier.model
    return Path(init)


def build_stage_model(recipe: Recipe, name: str):
    stage, cfg = recipe.stage(name), recipe.model
    path = init_model_path(recipe, name)
    # The model keeps the base's own length limit (e5: 512): the recipe's caps are applied per field
    # while training and are not a property of the saved model, which must encode long passages later.
    if stage.init == "model":
        prompts = cfg.prompts if cfg.prompts is not None else _base_prompts(path)
        model = build_embedder(path, pooling=cfg.pooling, out_dim=cfg.out_dim, max_seq_length=_base_max_length(path),
                               dims=cfg.matryoshka_dims, prompts=prompts, seed=recipe.seed)
    else:
        model = load_embedder(path, padding_free=False)
        model.conan_matryoshka_dims = matryoshka_dims(model.get_embedding_dimension(), cfg.matryoshka_dims)
    if stage.padding_free:
        from conan_embed.padding_free import enable_padding_free

        enable_padding_free(model)
    return model, path


def training_arguments(recipe: Recipe, stage: StageConfig, paths: StagePaths):
    import torch
    from sentence_transformers import SentenceTransformerTrainingArguments

    cuda = torch.cuda.is_available()
    precision = stage.precision
    if precision == "fp16" and not cuda:
        raise InputError("precision fp16 needs a GPU; use bf16 or fp32 on CPU", path=recipe.source,
                         field=f"stages.{paths.root.name}.precision")
    if precision == "bf16" and not cuda and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        # emulated bf16 is several times slower than fp32 on CPUs without AVX-512 bf16 / AMX
        warnings.warn("this CPU has no native bf16: training in fp32", stacklevel=2)
        precision = "fp32"
    return SentenceTransformerTrainingArguments(
        output_dir=str(paths.checkpoints),
        max_steps=stage.max_steps,
        per_device_train_batch_size=1,  # one StepPlan per micro-batch; the task's batch_size is inside it
        gradient_accumulation_steps=stage.grad_accum,
        learning_rate=stage.optim.lr,
        warmup_steps=stage.optim.warmup,  # a float below 1 is a fraction of max_steps in transformers 5
        weight_decay=stage.optim.weight_decay,
        max_grad_norm=stage.optim.max_grad_norm,
        lr_scheduler_type="linear",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not cuda,
        activation_checkpointing=stage.activation_checkpointing,
        deepspeed=str(resolve_relative(recipe, stage.deepspeed)) if stage.deepspeed else None,
        logging_strategy="steps",
        logging_steps=stage.log.every,
        save_strategy="steps",
        save_steps=stage.checkpoint.every,
        save_total_limit=stage.checkpoint.keep,
        report_to="none",  # TensorBoard is added explicitly, writing to <stage>/tensorboard
        disable_tqdm=True,  # our TrainingMonitor draws the bar
        dataloader_num_workers=0,
        dataloader_drop_last=True,  # composers yield full batches only; said explicitly, DDP stays quiet
        seed=recipe.seed,
    )


def _prepare_folder(recipe: Recipe, name: str, paths: StagePaths, fingerprint: dict, *, resume: bool) -> Path | None:
    """Check what is already in the stage folder; return the checkpoint to resume from (if any)."""
    if not paths.root.exists() or not any(paths.root.iterdir()):
        return None
    if not resume:
        raise InputError(f"stage {name!r} already has output in {paths.root}; pass --resume to continue it "
                         f"or --overwrite to start it again", path=paths.root)
    checkpoint = last_complete_checkpoint(paths.checkpoints)
    if checkpoint is None:
        return None
    saved = read_marker(checkpoint).get("fingerprint", {})
    diff = changed_keys(saved, fingerprint)
    if diff:
        raise InputError(f"cannot resume stage {name!r} from {checkpoint}: the recipe or its data changed since it "
                         f"was written ({_changes(diff, recipe.stage(name), recipe)}); pass --overwrite to start the "
                         f"stage again", path=recipe.source, field=diff[0])
    return checkpoint


def data_digests(stage, data_dir) -> dict:
    """Per task, the sha256 of its file and corpus: resuming on a re-mined candidate file of the same name (even
    the same size) would point the saved mining state and the data order into another ranking."""
    out = {}
    for name, task in stage.tasks.items():
        files = {"file": task.file, **({"corpus": task.corpus} if task.corpus else {})}
        out[name] = {k: content_digest(Path(data_dir) / f) for k, f in files.items() if (Path(data_dir) / f).exists()}
    return out


def _changes(diff: list[str], stage, recipe: Recipe) -> str:
    """The changed keys, with a changed data file named by its path."""
    named = []
    for key in diff[:8]:
        parts = key.split(".")
        if parts[0] == "data" and len(parts) == 3 and parts[1] in stage.tasks:
            path = Path(recipe.data.dir) / getattr(stage.tasks[parts[1]], parts[2])
            named.append(f"the contents of {path} (task {parts[1]}'s {parts[2]})")
        else:
            named.append(key)
    return ", ".join(named)


@contextlib.contextmanager
def _quiet_transformers():
    """Keep the console to our progress bar: no start-up chatter ("tokenizer has new PAD/BOS/EOS
    tokens", checkpoint-rotation notes), no per-checkpoint "Writing model shards" bars, no
    deprecation FutureWarnings from inside transformers."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def build_trainer(recipe: Recipe, name: str, *, tasks=None, show_progress: bool = False, stop_after: int | None = None,
                  checkpoint_info: dict | None = None, callbacks=()) -> ConanTrainer:
    """The stage's trainer, ready to `train()` (seeded model, arguments, composer, callbacks, miner);
    `train_stage` runs it. Tests and benchmarks call its `training_step` directly."""
    from transformers import set_seed
    from transformers.integrations import TensorBoardCallback

    stage, paths = recipe.stage(name), stage_paths(recipe, name)
    if tasks is None:
        tasks = load_tasks(stage.tasks, recipe.data.dir, key=f"stages.{name}.tasks")
    set_seed(recipe.seed)
    model, _ = build_stage_model(recipe, name)
    args = training_arguments(recipe, stage, paths)
    composer = build_composer(stage.composer_config, tasks, seed=recipe.seed, grad_accum=stage.grad_accum,
                              world_size=args.world_size)
    all_callbacks = [TrainingMonitor(paths.log, paths.root / "loss.png", title=f"{recipe.name}: {name}",
                                     show_progress=show_progress), SaveFinalCheckpoint()]
    if stage.log.tensorboard and launched_rank_and_world()[0] == 0:
        from tensorboardX import SummaryWriter

        all_callbacks.append(TensorBoardCallback(SummaryWriter(str(paths.root / "tensorboard"))))
    if stop_after is not None:
        all_callbacks.append(StopAfterStep(stop_after))
    miner = None
    if stage.mining.mode == "dynamic":
        miner = DynamicHardNegativeMiner(tasks, stage.mining, log_path=paths.log, key=f"stages.{name}.mining",
                                         source=recipe.source)
    return ConanTrainer(
        model=model, args=args, loss=ConanLoss(model, model.conan_matryoshka_dims, tasks, composer),
        tasks=tasks, composer=composer, max_length=recipe.max_length(stage), prompts=dict(model.prompts or {}),
        negatives=miner, checkpoint_info=checkpoint_info, callbacks=all_callbacks + list(callbacks))


def train_stage(recipe: Recipe, name: str, *, resume: bool = False, overwrite: bool = False,
                stop_after: int | None = None, show_progress: bool = True, callbacks=()) -> dict:
    """Train stage `name` of `recipe`; returns its summary (also written to <stage>/stage.json).

    resume: continue from the newest complete checkpoint; a finished stage with the same settings is
        returned as it is. overwrite: delete the stage folder first.
    stop_after: end (with a checkpoint) after this many steps, e.g. to split a long stage across jobs.
    """
    stage = recipe.stage(name)
    paths = stage_paths(recipe, name)
    init_path = init_model_path(recipe, name)
    fingerprint = stage_fingerprint(stage, model=asdict(recipe.model), seed=recipe.seed, init=str(init_path),
                                    data_dir=str(Path(recipe.data.dir).resolve()),
                                    data=data_digests(stage, recipe.data.dir))
    summary = read_summary(paths)
    if summary is not None and resume and not overwrite:
        diff = changed_keys(summary.get("fingerprint", {}), fingerprint)
        if diff:
            raise InputError(f"stage {name!r} finished with other settings or data ({_changes(diff, stage, recipe)}); "
                             f"pass --overwrite to train it again", path=recipe.source, field=diff[0])
        return summary
    tasks = load_tasks(stage.tasks, recipe.data.dir, key=f"stages.{name}.tasks")
    init_from_launch()  # several processes: rank 0 alone touches the stage folder outside training
    main = launched_rank_and_world()[0] == 0
    if main and overwrite and paths.root.exists():
        shutil.rmtree(paths.root)
    barrier()
    checkpoint = _prepare_folder(recipe, name, paths, fingerprint, resume=resume)
    if main:
        paths.root.mkdir(parents=True, exist_ok=True)
        truncate_log(paths.log, int(checkpoint.name.split("-")[1]) if checkpoint else 0)

    with _quiet_transformers():
        trainer = build_trainer(recipe, name, tasks=tasks, show_progress=show_progress, stop_after=stop_after,
                                checkpoint_info={"fingerprint": fingerprint}, callbacks=callbacks)
        model, miner = trainer.model, trainer.negatives
        start = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        seconds = time.perf_counter() - start
        if trainer.state.global_step < stage.max_steps:
            return {"stage": name, "stopped_at": trainer.state.global_step, "checkpoints": str(paths.checkpoints)}


        if main:
            save_embedder(model, paths.model)
        barrier()
    log = read_log(paths.log)
    rates = {}  # per task, from the lines that cover one task only (tasks differ several-fold in speed)
    for r in log:
        tasks_in_line = [k[5:] for k in r if k.startswith("loss/")]
        if len(tasks_in_line) == 1 and r.get("pairs_per_s"):
            rates.setdefault(tasks_in_line[0], []).append(r["pairs_per_s"])
    summary = {
        "stage": name,
        "model": str(paths.model),
        "init": str(init_path),
        "steps": trainer.state.global_step,
        "resumed_from": str(checkpoint) if checkpoint else None,
        "train_seconds": round(seconds, 1),
        "train_loss": output.training_loss,
        "final_loss": log[-1]["loss"] if log else None,
        "median_pairs_per_s": {t: statistics.median(v) for t, v in rates.items()},
        "tasks": {n: {"kind": t.kind, "file": str(t.path), "rows": len(t), "batch_size": t.config.batch_size}
                  for n, t in tasks.items()},
        "matryoshka_dims": list(model.conan_matryoshka_dims),
        "composer": stage.composer_config.name,
        "negatives": stage.mining.mode,
        "mining": miner.summary() if miner is not None else None,
        "fingerprint": fingerprint,
    }
    if main:
        write_json(paths.summary, summary)
    return summary

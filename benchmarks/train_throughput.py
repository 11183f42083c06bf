"""Training throughput (pairs/s) of our fine-tune step against sentence-transformers, in one run.

Ours: `train_stage` on a one-stage recipe with one `retrieval` task (query, positive, K hard negatives
= corpus texts of candidates[10:10+K], InfoNCE at temperature 0.05, a single loss: no Matryoshka dim
below the full one). Theirs: `SentenceTransformerTrainer` + `MultipleNegativesRankingLoss(scale=20)` on
a Dataset holding the same batches (anchor, positive, negative_1..K, in our composer's order and
grouping), with the same model, batch size, length cap, prompts, precision, optimizer settings and seed.
Our loop runs in three settings on the very same batches: `ours` (the default: the padding-free,
packed forward), `ours-padded` (`padding_free: false`, the padded forward ST also runs) and
`ours-cached` (GradCache, `loss.mini_batch_size`: what the cached loss costs at a batch that fits).
The loops take turns, their order reversed every repeat (ABBA). A step is the time between two
`on_step_end` events; the first W steps are dropped; pairs/s = pairs per step / the median step of a
repeat, then the median over repeats. The padding share is counted on the batches: the tokens each
layout runs that are padding (ours padded: one pass for queries, one for positives and negatives;
ST: one pass per column; ours: none). The breakdown (per-step medians, pooled over repeats) splits a
step into tokenisation+padding
(`model.preprocess`: in ST's collator, in our compute_loss), forward+loss, backward, gradient
clipping, the optimizer step, and the rest (data loading, callbacks, logging, LR scheduler, zero_grad).
On a GPU every timing point synchronizes the device (so the parts are device time, at a small cost).
On a machine shared with another job, pass --threads 1: oversubscribed intra-op threads slow both loops
tens of times over and drown the comparison.

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python benchmarks/train_throughput.py \
        [--model e5-small|tiny|PATH] [--batch-size 16] [--negatives 3] [--max-length 128] [--steps 12] \
        [--warmup-steps 3] [--repeats 3] [--fp32] [--threads N] [--mini-batch 16] \
        [--loops ours,ours-padded,ours-cached,st]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: ST's model-card and weight-loading bars
import torch
from transformers import TrainerCallback

PARTS = ("tok", "fwd+loss", "bwd", "clip", "optim")
SEED, LR, TEMPERATURE = 42, 1e-5, 0.05
LOOPS = ("ours", "ours-padded", "ours-cached", "st")


class StepTimer(TrainerCallback):
    """Step boundaries (`on_step_end`) and the seconds each part took, per step (index = steps ended)."""

    def __init__(self):
        self.ends, self.parts, self._opt = [], [defaultdict(float)], 0.0
        self.cuda = torch.cuda.is_available()

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def add(self, part: str, seconds: float) -> None:
        self.parts[-1][part] += seconds

    def wrap(self, part: str, fn):
        def timed(*args, **kwargs):
            start = self.now()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(part, self.now() - start)
        return timed

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._opt = self.now()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.add("optim", self.now() - self._opt)

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(self.now())
        self.parts.append(defaultdict(float))

    def steps(self, warmup: int) -> list[dict]:
        """One dict per measured step (seconds): step, the parts, other = step - parts."""
        rows = []
        for k in range(max(warmup, 1), len(self.ends)):
            row = {"step": self.ends[k] - self.ends[k - 1], **{p: self.parts[k][p] for p in PARTS}}
            row["other"] = row["step"] - sum(row[p] for p in PARTS)
            rows.append(row)
        return rows


class Timed:
    """Trainer mixin: times model.preprocess (also as ST's collator preprocess_fn), compute_loss minus the
    tokenisation inside it, training_step minus compute_loss (backward), and _clip_grad_norm."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timer = next(c for c in self.callback_handler.callbacks if isinstance(c, StepTimer))
        self.model.preprocess = self.timer.wrap("tok", self.model.preprocess)
        if getattr(self.data_collator, "preprocess_fn", None) is not None:
            self.data_collator.preprocess_fn = self.model.preprocess
        self._loss_s = 0.0

    def compute_loss(self, *args, **kwargs):
        tok, start = self.timer.parts[-1]["tok"], self.timer.now()
        out = super().compute_loss(*args, **kwargs)
        self._loss_s = self.timer.now() - start
        self.timer.add("fwd+loss", self._loss_s - (self.timer.parts[-1]["tok"] - tok))
        return out

    def training_step(self, *args, **kwargs):
        self._loss_s, start = 0.0, self.timer.now()
        out = super().training_step(*args, **kwargs)
        self.timer.add("bwd", self.timer.now() - start - self._loss_s)
        return out

    def _clip_grad_norm(self, model):
        start = self.timer.now()
        out = super()._clip_grad_norm(model)
        self.timer.add("clip", self.timer.now() - start)
        return out


def prepare(args, tmp: Path):
    """(model path, data dir, prompts)."""
    from conan_embed.modeling import E5_PROMPTS
    from conan_embed.recipe.stage_training import _base_prompts

    data = Path(args.data) if args.data else None
    if data is None and args.model == "tiny":
        from conan_embed.testing import tiny_training_data

        data = tmp / "data"
        tiny_training_data(data, questions=max(48, args.batch_size * (args.steps + 2)), candidates=10 + args.negatives)
    data = data or Path("runs/quickstart/data")
    if not (data / "manifest.json").is_file() and not (data / "finetune/retrieval.jsonl").is_file():
        from conan_embed.data.builders import build_all

        build_all(data)
    if args.model == "tiny":
        from conan_embed.data.records import read_records
        from conan_embed.testing import tiny_bert

        texts = [r["query"] for r in read_records(data / "finetune/retrieval.jsonl")]
        texts += [r["text"] for r in read_records(data / "finetune/corpus.jsonl")]
        path = tiny_bert(tmp / "tiny-bert", texts, max_positions=max(128, args.max_length))
    else:
        from conan_embed.model_loading import resolve_model

        path = resolve_model(args.model).location
    return path, data, _base_prompts(path) or dict(E5_PROMPTS)


def make_recipe(args, path, data, prompts, output: Path, *, padding_free: bool = True, mini_batch: int | None = None):
    from conan_embed.recipe.schema import recipe_from_dict

    task = {"kind": "retrieval", "file": "finetune/retrieval.jsonl", "corpus": "finetune/corpus.jsonl",
            "batch_size": args.batch_size, "negatives": {"count": args.negatives, "skip_top": 10},
            "loss": {"name": "infonce", "temperature": TEMPERATURE, "mini_batch_size": mini_batch}}
    return recipe_from_dict({
        "name": "train-throughput", "seed": SEED, "output_dir": str(output),
        "data": {"dir": str(data), "build": False},
        "model": {"base": str(path), "pooling": "mean", "out_dim": None, "matryoshka_dims": [],
                  "max_length": {"query": args.max_length, "passage": args.max_length}, "prompts": prompts},
        "stages": {"finetune": {
            "max_steps": args.steps, "tasks": {"retrieval": task}, "precision": args.precision,
            "padding_free": padding_free,
            "optim": {"lr": LR, "warmup": 0.05, "weight_decay": 0.001},
            "checkpoint": {"every": args.steps + 1, "keep": 2}, "log": {"every": 1, "tensorboard": False}}},
        "eval": {"enabled": False},
    })


def padding_shares(path, prompts, args, dataset, batches) -> dict[str, float]:
    """Share of the tokens each layout runs that are padding: ours padded (queries in one pass,
    positives and negatives in another, each padded to its longest), ST (one pass per column)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    doc = prompts.get("document", prompts.get("passage", ""))

    def lengths(texts, prompt):
        return [len(ids) for ids in tokenizer([prompt + t for t in texts], truncation=True,
                                              max_length=args.max_length)["input_ids"]]

    real = {"ours-padded": 0, "st": 0}
    run = {"ours-padded": 0, "st": 0}
    for rows in batches:
        columns = {c: [dataset[c][i] for i in rows] for c in dataset.column_names}
        q = lengths(columns["anchor"], prompts.get("query", ""))
        cols = [lengths(columns[c], doc) for c in dataset.column_names[1:]]
        docs = [n for col in cols for n in col]
        real["ours-padded"] += sum(q) + sum(docs)
        run["ours-padded"] += len(q) * max(q) + len(docs) * max(docs)
        real["st"] += sum(q) + sum(docs)
        run["st"] += len(q) * max(q) + sum(len(col) * max(col) for col in cols)
    return {k: 1 - real[k] / run[k] for k in real}


def st_data(recipe, steps: int):
    """Our composer's first `steps` batches as an (anchor, positive, negative_1..K) Dataset + index batches."""
    from datasets import Dataset

    from conan_embed.training.composers import build_composer
    from conan_embed.training.training_tasks import load_tasks

    stage = recipe.stage("finetune")
    tasks = load_tasks(stage.tasks, recipe.data.dir)
    composer = build_composer(stage.composer_config, tasks, seed=recipe.seed, grad_accum=1)
    plans = []
    for epoch in itertools.count():
        composer.set_epoch(epoch)
        plans += [plan for [(plan,)] in composer]
        if len(plans) >= steps:
            break
    count = stage.tasks["retrieval"].negatives.count
    columns = {"anchor": [], "positive": [], **{f"negative_{i + 1}": [] for i in range(count)}}
    batches = []
    for plan in plans[:steps]:
        batch = tasks[plan.task].texts(plan)
        batches.append(list(range(len(columns["anchor"]), len(columns["anchor"]) + len(batch.queries))))
        columns["anchor"] += batch.queries
        columns["positive"] += batch.passages
        for i in range(count):
            columns[f"negative_{i + 1}"] += [row[i] for row in batch.negatives]
    return Dataset.from_dict(columns), batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="e5-small", help="a shipped model, a folder, or 'tiny' (random tiny BERT)")
    parser.add_argument("--data", default=None, help="default runs/quickstart/data (tiny: a small generated folder)")
    for flag, default in (("--batch-size", 16), ("--negatives", 3), ("--max-length", 128), ("--steps", 12),
                          ("--warmup-steps", 3), ("--repeats", 3)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--bf16", dest="precision", action="store_const", const="bf16", default="bf16")
    parser.add_argument("--fp32", dest="precision", action="store_const", const="fp32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--mini-batch", type=int, default=16, help="ours-cached: texts per GradCache mini-batch")
    parser.add_argument("--loops", default=",".join(LOOPS), help=f"which loops to race (of {', '.join(LOOPS)})")
    args = parser.parse_args()
    if not 1 <= args.warmup_steps < args.steps - 1:
        parser.error("need 1 <= --warmup-steps < --steps - 1")
    chosen = args.loops.split(",")
    if not set(chosen) <= set(LOOPS) or not {"ours", "st"} <= set(chosen):
        parser.error(f"--loops: a subset of {', '.join(LOOPS)} holding ours and st")

    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers.trainer_callback import PrinterCallback

    import conan_embed.recipe.stage_training as stage_module
    from conan_embed.modeling import build_embedder

    if args.threads:
        torch.set_num_threads(args.threads)
    # train_stage builds its trainer from this module attribute: time ours through the same mixin
    stage_module.ConanTrainer = type("TimedConanTrainer", (Timed, stage_module.ConanTrainer), {})
    TimedST = type("TimedST", (Timed, SentenceTransformerTrainer),
                   {"get_batch_sampler": lambda self, *a, **kw: self.fixed_batches})

    def ours(**settings):
        def run(out: Path, timer: StepTimer) -> None:
            stage_module.train_stage(make_recipe(args, path, data, prompts, out, **settings), "finetune",
                                     show_progress=False, callbacks=[timer])
        return run

    def run_st(out: Path, timer: StepTimer) -> None:
        doc = prompts.get("document", prompts.get("passage"))
        st_prompts = {c: p for c, p in [("anchor", prompts.get("query"))] + [(c, doc) for c in dataset.column_names[1:]]
                      if p}
        st_args = SentenceTransformerTrainingArguments(
            output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=LR,
            warmup_steps=0.05, weight_decay=0.001, lr_scheduler_type="linear", bf16=args.precision == "bf16",
            use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no", disable_tqdm=True,
            dataloader_num_workers=0, prompts=st_prompts or None, seed=SEED)
        with stage_module._quiet_transformers():
            model = build_embedder(path, pooling="mean", out_dim=None, max_seq_length=args.max_length,
                                   prompts=prompts, seed=SEED)
            trainer = TimedST(model=model, args=st_args, train_dataset=dataset, callbacks=[timer],
                              loss=MultipleNegativesRankingLoss(model, scale=1 / TEMPERATURE))
            trainer.fixed_batches = batches
            trainer.remove_callback(PrinterCallback)  # as ConanTrainer does
            trainer.train()

    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        tmp = Path(tmp)
        with stage_module._quiet_transformers():
            path, data, prompts = prepare(args, tmp)
        dataset, batches = st_data(make_recipe(args, path, data, prompts, tmp / "probe"), args.steps)
        pairs = statistics.mean(len(b) for b in batches)
        padding = padding_shares(path, prompts, args, dataset, batches)
        print(f"model {args.model} ({path}), data {data}, {pairs:g} pairs/step (batch {args.batch_size}, "
              f"{args.negatives} hard negatives), max_length {args.max_length}, {args.precision}, torch threads "
              f"{torch.get_num_threads()}, {args.steps} steps - {args.warmup_steps} warm-up, {args.repeats} repeats")
        print(f"padding share of the tokens run: ours-padded {padding['ours-padded']:.1%}, st {padding['st']:.1%}, "
              f"ours (padding-free) 0.0%")
        every = {"ours": ours(), "ours-padded": ours(padding_free=False), "ours-cached": ours(mini_batch=args.mini_batch),
                 "st": run_st}
        loops = {name: every[name] for name in chosen}
        rates, steps = {k: [] for k in loops}, {k: [] for k in loops}
        for r in range(args.repeats):
            line = []
            # ABBA: the order reverses every repeat, so drift on a shared machine hits every loop alike
            for name, run in (list(loops.items()) if r % 2 == 0 else list(loops.items())[::-1]):
                timer, out = StepTimer(), tmp / f"{name}-{r}"
                run(out, timer)
                measured = timer.steps(args.warmup_steps)
                step_s = statistics.median(s["step"] for s in measured)
                rates[name].append(pairs / step_s)
                steps[name] += measured
                line.append(f"{name} {rates[name][-1]:7.1f} pairs/s ({1000 * step_s:6.1f} ms/step)")
                shutil.rmtree(out, ignore_errors=True)
                gc.collect()
            print(f"repeat {r + 1}: " + "   ".join(line))

    columns = ("step",) + PARTS + ("other",)
    print(f"{'loop':<11} {'pairs/s':>8} " + " ".join(f"{c + ' ms':>11}" for c in columns))
    rate = {}
    for name in loops:
        rate[name] = statistics.median(rates[name])
        medians = [1000 * statistics.median(s[c] for s in steps[name]) for c in columns]
        print(f"{name:<11} {rate[name]:>8.1f} " + " ".join(f"{m:>11.1f}" for m in medians))
    ratios = [o / t for o, t in zip(rates["ours"], rates["st"])]
    print("per-repeat ratio ours / st: " + ", ".join(f"{r:.2f}" for r in ratios))
    extra = ""
    if "ours-padded" in rate:
        extra += (f" ours_padded_pairs_per_s={rate['ours-padded']:.1f} padding_free_speedup="
                  f"{rate['ours'] / rate['ours-padded']:.2f} padding_share={padding['ours-padded']:.3f}")
    if "ours-cached" in rate:
        extra += f" cached_pairs_per_s={rate['ours-cached']:.1f} cached_cost={rate['ours'] / rate['ours-cached']:.2f}"
    print(f"RESULT train_throughput model={args.model} batch={args.batch_size} negatives={args.negatives} "
          f"max_length={args.max_length} precision={args.precision} ours_pairs_per_s={rate['ours']:.1f} "
          f"st_pairs_per_s={rate['st']:.1f}{extra} ratio={rate['ours'] / rate['st']:.2f}")


if __name__ == "__main__":
    main()

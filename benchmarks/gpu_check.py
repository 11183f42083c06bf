"""The GPU check: every path that only a GPU exercises, once, with a RESULT line each (issue 24).

CI has no GPU; a session lent one runs this (one call, under 8 minutes on one H100) and records the
RESULT lines in docs/benchmarks.md. Each check runs in a process of its own with a time limit; a check
whose packages are missing prints `RESULT gpu_<check> status=skipped reason=...`, a failing one
`status=failed` and the end of its output, and the others still run.

The device machine carries only the working tree (64 MiB): no e5-small and no shipped data. So the
model is a BERT-base-sized encoder (12 layers, hidden 768) with random weights and a character
vocabulary, and the data is random Chinese text of the shipped data's lengths
(`conan_embed.testing.synthetic_training_data`): speed and memory are what is measured here, not
quality.

- varlen: the padding-free forward on the GPU. Which kernel runs (flash_attn's varlen, torch's
  varlen_attn, or length groups over SDPA); packed against padded embeddings and gradients (fp32); and
  forward+backward (bf16, training) and encode (bf16, no grad) times, packed against padded.
- train: bf16 training with cross-GPU batch balance (2 virtual retrieval ranks + STS) and dynamic hard
  negatives checked every 5 steps, padding-free and padded: pairs/s and the speed-up.
- deepspeed: the same stage under DeepSpeed ZeRO-1 (recipes/ds_zero1.json), one process.
- throughput: benchmarks/train_throughput.py on the GPU (ours padding-free, padded, cached, against
  sentence-transformers on the same batches).
- cached: benchmarks/train_memory.py on the GPU (CUDA peak memory of a cached batch of 1024 against an
  uncached 128, and the time per example).
- serve: benchmarks/serve_peers.py --device cuda (our server, eager and `--compile` with CUDA graphs,
  against in-process encode, bf16) on the saved random model.

Run on the device machine (its python3 has torch; the packages it lacks travel in .whl/, installed
with `pip install --no-index --no-deps --no-build-isolation --target /tmp/site .whl/*` and
PYTHONPATH=/tmp/site: docs/benchmarks.md, "GPU check", lists them):

    PYTHONPATH=src python3 benchmarks/gpu_check.py [--out /tmp/gpu-check] [--only varlen,train]
    PYTHONPATH=src python3 benchmarks/gpu_check.py --smoke      # the same checks, tiny, on the CPU (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKS = ("varlen", "train", "deepspeed", "throughput", "cached", "serve")
LIMITS = {"varlen": 60, "train": 90, "deepspeed": 150, "throughput": 110, "cached": 100, "serve": 120}


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def prepare(work: Path, smoke: bool) -> dict:
    """Synthetic data and a random encoder (a sentence-transformers folder), once per --out folder."""
    from conan_embed.modeling import build_embedder, save_embedder
    from conan_embed.testing import synthetic_training_data, tiny_bert

    done = work / "prepared.json"
    if done.is_file():
        return json.loads(done.read_text())
    texts = synthetic_training_data(work / "data", rows=256 if smoke else 4096, corpus=1024 if smoke else 16384)
    size = dict(hidden=32, layers=2, heads=2, intermediate=64) if smoke else \
        dict(hidden=768, layers=12, heads=12, intermediate=3072)
    bert = tiny_bert(work / "bert", texts + ["query: passage: "], max_positions=512, dropout=0.1, **size)
    model = build_embedder(bert, pooling="mean", out_dim=None, max_seq_length=512,
                           prompts={"query": "query: ", "document": "passage: "})
    save_embedder(model, work / "model")
    info = {"bert": str(bert), "model": str(work / "model"), "data": str(work / "data")}
    done.write_text(json.dumps(info))
    return info


def _stage_recipe(info: dict, out: Path, device_steps: int, *, padding_free=True, deepspeed=None, smoke=False):
    from conan_embed.recipe.schema import recipe_from_dict

    batch = 8 if smoke else 32
    stage = {
        "max_steps": device_steps, "composer": {"name": "cbb", "retrieval_ranks": 2, "sts_ranks": 1},
        "tasks": {
            "retrieval": {"kind": "retrieval", "file": "finetune/retrieval.jsonl", "corpus": "finetune/corpus.jsonl",
                          "batch_size": batch, "negatives": {"count": 4, "skip_top": 2}},
            "sts": {"kind": "sts", "file": "finetune/sts.jsonl", "batch_size": 2 * batch, "loss": {"name": "cosent"}}},
        "mining": {"mode": "dynamic", "check_every": 5, "tasks": ["retrieval"]},
        "precision": "bf16", "padding_free": padding_free, "optim": {"lr": 2e-5, "warmup": 0.05},
        "checkpoint": {"every": device_steps, "keep": 2}, "log": {"every": 1, "tensorboard": False}}
    if deepspeed:
        stage["deepspeed"] = deepspeed
    return recipe_from_dict({
        "name": "gpu-check", "seed": 42, "output_dir": str(out), "data": {"dir": info["data"], "build": False},
        "model": {"base": info["bert"], "pooling": "mean", "out_dim": None, "matryoshka_dims": [256],
                  "max_length": {"query": 64, "passage": 256}, "prompts": {"query": "query: ", "document": "passage: "}},
        "stages": {"finetune": stage}, "eval": {"enabled": False}})


def _rate(log_path: Path) -> float:
    from conan_embed.training.callbacks import read_log

    rates = [r["pairs_per_s"] for r in read_log(log_path)[2:] if r.get("pairs_per_s")]
    return statistics.median(rates)


def check_varlen(info: dict, smoke: bool) -> str:
    import torch

    from conan_embed.model_loading import load_embedder
    from conan_embed.padding_free import _flash_attn_varlen, _torch_varlen, is_padding_free
    from conan_embed.data.records import read_corpus

    device = "cpu" if smoke else "cuda"
    _, texts = read_corpus(Path(info["data"]) / "finetune/corpus.jsonl")
    texts = texts[: 32 if smoke else 256]
    padded = load_embedder(info["model"], device=device, padding_free=False)
    packed = load_embedder(info["model"], device=device)
    if not is_padding_free(packed):
        from conan_embed.padding_free import unsupported_reason

        return f"status=off reason={unsupported_reason(packed)!r}"
    for m in (padded, packed):  # exact comparison: no dropout
        m.train()
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
        m[0].auto_model.config.attention_probs_dropout_prob = 0.0

    def run(model, n, grad=True):
        model.zero_grad(set_to_none=True)
        f = model.preprocess(texts[:n], prompt="passage: ", max_length=256)
        f = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in f.items()}
        e = model(f)["sentence_embedding"]
        if grad:
            e.float().pow(2).sum().backward()
        return e.detach().float()

    a, b = run(padded, 64), run(packed, 64)
    grads = {n: p.grad for n, p in padded.named_parameters() if p.grad is not None}
    scale = max(g.abs().max().item() for g in grads.values())
    grad_diff = max((p.grad - grads[n]).abs().max().item() for n, p in packed.named_parameters() if n in grads) / scale

    def timed(model, grad: bool) -> float:
        times = []
        ctx = torch.autocast(device, dtype=torch.bfloat16)
        for i in range(7):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            with ctx, (torch.enable_grad() if grad else torch.no_grad()):
                run(model, len(texts), grad)
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t)
        return statistics.median(times)

    train = timed(padded, True) / timed(packed, True)
    for m in (padded, packed):
        m.eval()
    encode = timed(padded, False) / timed(packed, False)
    kernel_train = "flash_attn" if _flash_attn_varlen() and device == "cuda" else "sdpa_groups"
    kernel_eval = kernel_train if kernel_train == "flash_attn" else (
        "torch_varlen" if _torch_varlen() and device == "cuda" else "sdpa_groups")
    return (f"kernel_train={kernel_train} kernel_eval={kernel_eval} texts={len(texts)} "
            f"emb_max_diff={(a - b).abs().max().item():.2e} grad_max_rel_diff={grad_diff:.2e} "
            f"train_speedup={train:.2f} encode_speedup={encode:.2f}")


def check_train(info: dict, smoke: bool, out: Path) -> str:
    from conan_embed.recipe.stage_training import stage_paths, train_stage

    steps = 6 if smoke else 40
    rates, summaries = {}, {}
    for name, padding_free in (("packed", True), ("padded", False)):
        recipe = _stage_recipe(info, out / f"train-{name}", steps, padding_free=padding_free, smoke=smoke)
        summaries[name] = train_stage(recipe, "finetune", overwrite=True, show_progress=False)
        rates[name] = _rate(stage_paths(recipe, "finetune").log)
    mining = summaries["packed"]["mining"]["retrieval"]
    return (f"steps={steps} pairs_per_s={rates['packed']:.1f} padded_pairs_per_s={rates['padded']:.1f} "
            f"padding_free_speedup={rates['packed'] / rates['padded']:.2f} "
            f"final_loss={summaries['packed']['final_loss']:.4f} dhnm_checks_rows={mining['rows']} "
            f"dhnm_rows_replaced={mining['rows_replaced']}")


def check_deepspeed(info: dict, smoke: bool, out: Path) -> str:
    try:
        import deepspeed  # noqa: F401
    except ImportError as exc:
        return f"status=skipped reason='deepspeed not installed ({exc})'"
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", "29533"))
    from conan_embed.recipe.stage_training import stage_paths, train_stage

    steps = 4 if smoke else 30
    recipe = _stage_recipe(info, out / "deepspeed", steps, deepspeed=str(HERE.parent / "recipes/ds_zero1.json"),
                           smoke=smoke)
    summary = train_stage(recipe, "finetune", overwrite=True, show_progress=False)
    return f"steps={steps} pairs_per_s={_rate(stage_paths(recipe, 'finetune').log):.1f} final_loss={summary['final_loss']:.4f}"


def _script(args: list[str], limit: int) -> str:
    """Another benchmark as a subprocess: its RESULT line's fields."""
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=_env(), timeout=limit)
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not result:
        raise RuntimeError(f"{args[0]} exited {done.returncode}: {(done.stderr or done.stdout)[-1500:]}")
    return result[-1].split(" ", 2)[2]


def check_throughput(info: dict, smoke: bool, out: Path) -> str:
    sizes = ["--batch-size", "4", "--negatives", "2", "--max-length", "32", "--steps", "4", "--warmup-steps", "1",
             "--repeats", "1", "--mini-batch", "3"] if smoke else \
        ["--batch-size", "64", "--negatives", "7", "--max-length", "256", "--steps", "12", "--warmup-steps", "3",
         "--repeats", "2", "--mini-batch", "128"]
    return _script([str(HERE / "train_throughput.py"), "--model", info["bert"], "--data", info["data"], *sizes],
                   LIMITS["throughput"] - 5)


def check_cached(info: dict, smoke: bool, out: Path) -> str:
    device = [] if smoke else ["--device", "cuda"]
    sizes = ["--negatives", "2", "--batches", "4,16", "--mini-batch", "4", "--max-uncached", "4", "--steps", "2",
             "--max-length", "32"] if smoke else \
        ["--negatives", "7", "--batches", "128,1024", "--mini-batch", "128", "--max-uncached", "128", "--steps", "3",
         "--max-length", "256"]
    return _script([str(HERE / "train_memory.py"), "--model", info["bert"], "--data", info["data"], *device, *sizes],
                   LIMITS["cached"] - 5)


def check_serve(info: dict, smoke: bool, out: Path) -> str:
    missing = []
    for package in ("fastapi", "uvicorn", "httpx", "insuranceqa_data"):
        try:
            __import__(package)
        except ImportError:
            missing.append(package)
    if missing:
        return f"status=skipped reason='not installed: {', '.join(missing)}'"
    device = "cpu" if smoke else "cuda"
    systems = "ours-torch,inproc-torch" if smoke else "ours-torch-bf16,ours-torch-compile-bf16,inproc-torch-bf16"
    return _script([str(HERE / "serve_peers.py"), "--model", info["model"], "--device", device, "--systems", systems,
                    "--levels", "32", "--ratio-level", "32", "--requests", "32" if smoke else "256", "--repeats", "1",
                    "--duration", "30"], LIMITS["serve"] - 5)


def run_one(check: str, work: Path, smoke: bool) -> str:
    info = prepare(work, smoke)
    if check == "varlen":
        return check_varlen(info, smoke)
    return globals()[f"check_{check}"](info, smoke, work / check)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/gpu-check", help="work folder (data, model, runs)")
    parser.add_argument("--only", default=",".join(CHECKS), help=f"checks to run (of {', '.join(CHECKS)})")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: the checks' code, not the GPU")
    parser.add_argument("--check", help=argparse.SUPPRESS)  # internal: run one check in this process
    args = parser.parse_args()
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    if args.check:
        print("CHECK " + run_one(args.check, work, args.smoke), flush=True)
        return
    chosen = [c for c in args.only.split(",") if c]
    unknown = set(chosen) - set(CHECKS)
    if unknown:
        parser.error(f"--only: unknown checks {sorted(unknown)}; known: {', '.join(CHECKS)}")
    import torch

    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run this on a GPU machine, or pass --smoke for the CPU dry run")
    device = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    print(f"gpu check on {device}, torch {torch.__version__}, work folder {work}", flush=True)
    start = time.perf_counter()
    prepare(work, args.smoke)
    passed = 0
    for check in chosen:
        t = time.perf_counter()
        cmd = [sys.executable, __file__, "--out", str(work), "--check", check] + (["--smoke"] if args.smoke else [])
        try:
            # the dry run shares a small CPU with whatever else runs there: its limits are looser
            limit = LIMITS[check] * (4 if args.smoke else 1)
            done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=limit)
            lines = [line[6:] for line in done.stdout.splitlines() if line.startswith("CHECK ")]
            if done.returncode or not lines:
                fields = f"status=failed rc={done.returncode}"
                print((done.stderr or done.stdout)[-2000:], flush=True)
            else:
                fields = lines[-1] if "status=" in lines[-1] else f"status=ok {lines[-1]}"
        except subprocess.TimeoutExpired:
            fields = f"status=failed reason='over {limit} s'"
        passed += "status=ok" in fields
        print(f"RESULT gpu_{check} seconds={time.perf_counter() - t:.0f} {fields}", flush=True)
    print(f"RESULT gpu_check device={device.replace(' ', '_')} checks={len(chosen)} ok={passed} "
          f"seconds={time.perf_counter() - start:.0f}")


if __name__ == "__main__":
    main()

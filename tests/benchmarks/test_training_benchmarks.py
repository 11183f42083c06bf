"""Smoke runs of the training benchmarks and the GPU check at tiny sizes on the CPU: each must reach
its RESULT line, so none rots between the sessions that run them at full size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(args: list[str], timeout: int = 300) -> list[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(BENCHMARKS.parent / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    return done.stdout.splitlines()


def _fields(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split()[2:] if "=" in item)


def test_train_throughput_races_every_loop():
    lines = _run([str(BENCHMARKS / "train_throughput.py"), "--model", "tiny", "--batch-size", "4", "--negatives", "2",
                  "--max-length", "32", "--steps", "4", "--warmup-steps", "1", "--repeats", "2", "--threads", "1",
                  "--mini-batch", "3"])
    assert any(line.startswith("padding share of the tokens run: ours-padded") for line in lines)
    assert lines[-1].startswith("RESULT train_throughput ")
    fields = _fields(lines[-1])
    for key in ("ours_pairs_per_s", "st_pairs_per_s", "ours_padded_pairs_per_s", "padding_free_speedup",
                "padding_share", "cached_pairs_per_s", "cached_cost", "ratio"):
        assert float(fields[key]) >= 0, key


def test_train_memory_compares_cached_with_uncached():
    lines = _run([str(BENCHMARKS / "train_memory.py"), "--model", "tiny", "--negatives", "2", "--batches", "4,8",
                  "--mini-batch", "4", "--max-uncached", "4", "--steps", "2", "--max-length", "32", "--threads", "1"])
    assert lines[-1].startswith("RESULT train_memory ")
    fields = _fields(lines[-1])
    assert fields["uncached_batch"] == "4" and fields["cached_batch"] == "8"
    assert float(fields["memory_ratio"]) > 0 and float(fields["time_per_example_ratio"]) > 0


def test_gpu_check_dry_run(tmp_path):
    """The GPU check's own code on the CPU (--smoke): the packed-vs-padded check and CBB + dynamic-negative
    training. Its other checks call the benchmarks smoke-tested above and in test_smoke.py, and DeepSpeed
    ZeRO-1 runs in tests/training/test_cbb.py."""
    lines = _run([str(BENCHMARKS / "gpu_check.py"), "--smoke", "--out", str(tmp_path), "--only", "varlen,train"],
                 timeout=600)
    results = {line.split()[1]: line for line in lines if line.startswith("RESULT ")}
    assert set(results) == {"gpu_varlen", "gpu_train", "gpu_check"}
    assert all("status=ok" in results[k] for k in ("gpu_varlen", "gpu_train")), results
    varlen = _fields(results["gpu_varlen"])
    assert float(varlen["emb_max_diff"]) < 1e-4 and float(varlen["grad_max_rel_diff"]) < 1e-4
    assert _fields(results["gpu_check"])["ok"] == "2"

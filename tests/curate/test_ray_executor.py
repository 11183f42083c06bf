"""The Ray Data executor gives the same files as the local one (a real 2-CPU local cluster, offline)."""

from __future__ import annotations

import numpy as np
import pytest

from conan_embed.curate import curate, curate_config_from_dict
from conan_embed.curate.curate_config import ExecutorConfig

from .conftest import write_jsonl
from .test_curation_steps import direct_edges, partitioned_edges, signature_work

pytest.importorskip("ray")
pytest.importorskip("ray.data")


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster for the module (~5 s to start); the executor must leave it running."""
    import ray
    import ray.data

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=300 * 2**20)
    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars
    ctx.enable_progress_bars = False
    yield ray
    ctx.enable_progress_bars = saved
    if started:
        ray.shutdown()


@pytest.fixture
def executor(ray_cluster):
    from conan_embed.curate.ray_executor import RayExecutor

    ex = RayExecutor(ExecutorConfig(name="ray"), show_progress=False)
    yield ex
    ex.close()
    assert ray_cluster.is_initialized()  # not ours to shut down


def test_map_keeps_item_order_and_raises_the_workers_error(executor):
    items = [(k, {"text": "今天天气很好" * k, "tags": [k, None]}) for k in range(5)]
    assert executor.map(lambda item: (item[0], len(item[1]["text"]), item[1]["tags"]), items, "demo") == \
        [(k, 6 * k, [k, None]) for k in range(5)]

    def fails_on_three(k):
        if k == 3:
            raise KeyError(f"bad item {k}")
        return k

    with pytest.raises(KeyError, match="bad item 3"):
        executor.map(fails_on_three, list(range(5)), "demo")
    assert executor.map(fails_on_three, [], "demo") == []


def test_map_with_builds_one_resource_per_actor_and_keeps_order(ray_cluster):
    import os

    from conan_embed.curate.ray_executor import RayExecutor

    ex = RayExecutor(ExecutorConfig(name="ray", teacher_actors=2), show_progress=False)
    try:
        got = ex.map_with(lambda: {"pid": os.getpid(), "offset": 100}, lambda s, x: (x + s["offset"], s["pid"]),
                          list(range(6)), "teacher")
        assert ex.map_with(lambda: 1 / 0, lambda s, x: x, [], "teacher") == []
    finally:
        ex.close()
    assert [v for v, _ in got] == list(range(100, 106))
    assert os.getpid() not in {pid for _, pid in got} and len({pid for _, pid in got}) <= 2


def test_a_resource_that_fails_to_build_reports_its_own_error():
    """In-process: the actor keeps the error and returns it per item; the driver raises it."""
    import pyarrow as pa

    from conan_embed.curate.ray_executor import _dumps, _Failure, _loads, _ResourceActor
    from conan_embed.errors import InputError

    def no_model():
        raise InputError("teacher model 'nope' not found")

    actor = _ResourceActor(no_model, lambda s, x: x)
    out = actor(pa.table({"i": [0, 1], "item": pa.array([_dumps(1), _dumps(2)], pa.binary())}))
    assert out.column("i").to_pylist() == [0, 1]
    failure = _loads(out.column("result")[1].as_py())
    assert isinstance(failure, _Failure) and "no_model" in failure.text  # the remote traceback
    with pytest.raises(InputError, match="teacher model 'nope' not found"):
        failure.reraise()


def test_a_clear_error_without_ray(monkeypatch):
    import sys

    from conan_embed.curate.ray_executor import RayExecutor
    from conan_embed.errors import InputError

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError, match=r"pip install 'conan-embed\[ray\]'"):
        RayExecutor(ExecutorConfig(name="ray"))


@pytest.mark.parametrize("sizes", [[40, 0, 25, 60, 1], [0, 0]])
def test_dedup_edge_steps_on_ray_equal_the_direct_edges(tmp_path, executor, sizes):
    """The band and edge steps as Ray tasks: the same edges as `minhash.candidate_edges` over all rows."""
    work, dedup, gid, hashes, sig = signature_work(tmp_path, sizes)
    got = partitioned_edges(work, dedup, executor, 5)
    expected = direct_edges(dedup, gid, hashes, sig)
    assert got.dtype == np.int64 and got.shape == expected.shape and (len(got) > 100 or not sum(sizes))
    np.testing.assert_array_equal(got, expected)


def _near_copy(text: str) -> str:
    """One character in ~60 replaced, 25+ apart: exact Jaccard of the 5-grams ~0.8."""
    chars = list(text)
    for pos in range(7, len(chars), 60):
        chars[pos] = "甲" if chars[pos] != "甲" else "乙"
    return "".join(chars)


@pytest.fixture(scope="module")
def raw_pairs(tmp_path_factory):
    from conan_embed.data.builders import build_weak_pairs

    pairs = build_weak_pairs()
    base = [{**p, "id": f"r{i}"} for i, p in enumerate(pairs[::max(len(pairs) // 700, 1)][:700])]
    long = [p for p in base if len(p["passage"]) >= 150]
    near = [{**p, "id": f"near{i}", "passage": _near_copy(p["passage"])} for i, p in enumerate(long[:40])]
    exact = [{**p, "id": f"copy{i}"} for i, p in enumerate(base[5:400:20])]
    bad = ["{not json", {"query": "缺少段落"}, {"query": "问题", "passage": 42}]
    rows = base[:300] + bad[:1] + near[:20] + exact + base[300:] + bad[1:] + near[20:]
    path = tmp_path_factory.mktemp("raw") / "raw.jsonl"
    write_jsonl(path, rows)
    return path, len(rows)


def _tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ray_and_local_executors_write_the_same_files(tmp_path, raw_pairs, tiny_teacher, ray_cluster):
    path, n = raw_pairs

    def config(executor: dict):
        return curate_config_from_dict({
            "shard_rows": 90, "executor": executor,
            "stages": {"dedup": {"enabled": True}, "sample": {"size": 400, "by": "source"},
                       "teacher": {"model": tiny_teacher, "percentile": 20,
                                   "max_length": {"query": 16, "passage": 32}, "batch_size": 16}}})

    local = curate([path], tmp_path / "local", config({"name": "local", "workers": 1}), show_progress=False)
    on_ray = curate([path], tmp_path / "ray", config({"name": "ray"}), show_progress=False)
    assert ray_cluster.is_initialized()

    assert local["rows_in"] == n and local["kept"] > 0
    reasons = {k for row in local["table"] for k in row["reasons"]}
    assert {"invalid_json", "missing_field", "exact", "near", "budget", "below_cut"} <= reasons, local["table"]
    assert on_ray["table"] == local["table"]
    assert on_ray["teacher"]["cut"] == local["teacher"]["cut"]
    assert on_ray["dedup"] == {**local["dedup"], "seconds": on_ray["dedup"]["seconds"]}
    for sub in ("kept", "rejected"):
        files = _tree(tmp_path / "local" / sub)
        assert len(files) > 1 and _tree(tmp_path / "ray" / sub) == files, sub

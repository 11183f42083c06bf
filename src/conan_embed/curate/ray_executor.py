"""The Ray Data executor: the pipeline's per-shard functions spread over a Ray cluster (design notes:
docs/design-curation.md §7).

It runs the very functions `LocalExecutor` runs, so both write the same files:

* `map`: one Ray Data row per shard, `map_batches` with one shard per batch (a shard is large; the
  function writes its own outputs atomically and returns a small dict, so a retried task is harmless);
* `candidate_edges`: the shards' band keys become rows `(partition = key mod P, band, key, gid)`;
  `groupby("partition").map_groups` runs the vectorised `minhash.bucket_edges` per hash partition (a
  bucket never spans two partitions, so the union of the partitions' edges is the local result); never
  one group per bucket (measured 5x slower);
* `score`: an actor pool whose actors build the scorer (a teacher model) once each, `num_gpus` apiece.

Items and results travel as cloudpickled bytes in a binary column (`{"i": index, "item": bytes}`), so
Arrow never converts a dataclass or a dict of lists. An exception in a shard is carried back the same
way and re-raised in the driver, the first in item order, with the remote traceback as a note; the
other shards finish, so a resumed run has less to do.

Paths are the pipeline's (absolute): on a multi-node cluster, input and output must be on a shared
filesystem.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Sequence

import numpy as np

from conan_embed.curate import minhash
from conan_embed.errors import InputError


def _dumps(obj) -> bytes:
    import cloudpickle

    return cloudpickle.dumps(obj)


def _loads(data: bytes):
    import cloudpickle

    return cloudpickle.loads(data)


class _Failure:
    """An exception raised in a worker, carried back as a result (with its remote traceback)."""

    def __init__(self, error: BaseException):
        self.text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        try:
            self.error = _loads(_dumps(error))  # some exceptions do not survive pickling
        except Exception:
            self.error = RuntimeError(f"{type(error).__name__}: {error}")

    def reraise(self):
        error = self.error
        if hasattr(error, "add_note"):
            error.add_note(f"raised in a Ray worker:\n{self.text}")
        raise error


def _guarded(fn: Callable, *args):
    try:
        return fn(*args)
    except Exception as error:  # carried to the driver, raised there
        return _Failure(error)


def _result_table(index, results: list):
    import pyarrow as pa

    return pa.table({"i": pa.array(index, pa.int64()),
                     "result": pa.array([_dumps(r) for r in results], pa.binary())})


def _ordered(ds, n: int) -> list:
    """Results of a dataset of (i, result) rows, in item order; the first failure is raised."""
    results: list = [None] * n
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for i, data in zip(batch.column("i").to_pylist(), batch.column("result").to_pylist()):
            results[i] = _loads(data)
    for r in results:
        if isinstance(r, _Failure):
            r.reraise()
    return results


def _named(fn: Callable, name: str) -> Callable:
    fn.__name__ = fn.__qualname__ = name  # names the Ray Data operator (progress bars, logs)
    return fn


class _ScoreActor:
    """One teacher replica: builds the scorer once, then runs `fn(scorer, item)` per row."""

    def __init__(self, make_scorer: Callable, fn: Callable):
        self.fn = fn
        self.scorer = _guarded(make_scorer)  # a failure here is reported per item, with its cause

    def __call__(self, batch):
        items = [_loads(b) for b in batch.column("item").to_pylist()]
        if isinstance(self.scorer, _Failure):
            results = [self.scorer] * len(items)
        else:
            results = [_guarded(self.fn, self.scorer, item) for item in items]
        return _result_table(batch.column("i").to_pylist(), results)


class RayExecutor:
    name = "ray"

    def __init__(self, config, show_progress: bool = True):
        try:
            import ray
            import ray.data
        except ImportError as e:
            raise InputError("the ray executor needs Ray Data: pip install 'conan-embed[ray]'") from e
        self.config = config
        self.show_progress = show_progress
        self.started = False
        if not ray.is_initialized():
            kwargs: dict = {}
            local = config.address == "local" or config.address is None and not os.environ.get("RAY_ADDRESS")
            if local:  # a new cluster on this machine (else connect: num_cpus would be refused)
                kwargs = {"include_dashboard": False, "log_to_driver": False}
                if config.workers:
                    kwargs["num_cpus"] = config.workers
            ray.init(address=config.address, **kwargs)
            self.started = True
        ctx = ray.data.DataContext.get_current()
        self._saved_context = {"enable_progress_bars": ctx.enable_progress_bars,
                               "print_on_execution_start": ctx.print_on_execution_start}
        ctx.enable_progress_bars = show_progress
        ctx.print_on_execution_start = show_progress

    def _items(self, items: Sequence):
        """One row (and one block) per item: {"i": index, "item": cloudpickled bytes}."""
        import ray.data

        return ray.data.from_items([{"i": i, "item": _dumps(item)} for i, item in enumerate(items)],
                                   override_num_blocks=len(items))

    def map(self, fn: Callable, items: Sequence, desc: str) -> list:
        """[fn(item) for item in items], one Ray task per item (CPU stages)."""
        if not len(items):
            return []

        def run(batch):
            results = [_guarded(fn, _loads(b)) for b in batch.column("item").to_pylist()]
            return _result_table(batch.column("i").to_pylist(), results)

        ds = self._items(items).map_batches(_named(run, desc), batch_size=1, batch_format="pyarrow")
        return _ordered(ds, len(items))

    def candidate_edges(self, band_keys: Callable[[str], tuple[np.ndarray, np.ndarray]], parts: Sequence[str],
                        drop: np.ndarray) -> np.ndarray:
        """LSH candidate edges over all parts, as `LocalExecutor.candidate_edges` (the same array)."""
        import pyarrow as pa
        import ray.data
        from ray.data.context import ShuffleStrategy

        if not len(parts):
            return np.zeros((0, 2), np.int64)
        drop = np.unique(np.asarray(drop, dtype=np.int64))
        partitions = max(len(parts), 2)  # a shard's band keys (~20 MB at 50k rows) per hash partition
        schema = pa.schema([("partition", pa.int64()), ("band", pa.int64()), ("key", pa.uint64()),
                            ("gid", pa.int64())])

        def to_rows(batch):
            tables = [schema.empty_table()]
            for part in batch.column("part").to_pylist():
                gid, keys = band_keys(part)
                gid = np.asarray(gid, dtype=np.int64)
                keep = ~np.isin(gid, drop)
                gid, keys = gid[keep], np.asarray(keys, dtype=np.uint64)[:, keep]
                bands, n = keys.shape
                key = keys.reshape(-1)
                tables.append(pa.table({
                    "partition": (key % np.uint64(partitions)).astype(np.int64),
                    "band": np.repeat(np.arange(bands, dtype=np.int64), n),
                    "key": key, "gid": np.tile(gid, bands)}, schema=schema))
            return pa.concat_tables(tables)

        def edges(group):
            e = minhash.bucket_edges(group["key"], group["gid"], group["band"])
            return {"u": e[:, 0], "v": e[:, 1]}

        ds = ray.data.from_items([{"part": p} for p in parts], override_num_blocks=len(parts))
        # The sort-based shuffle (its own context copy): the default hash shuffle starts aggregator
        # actors on every call, measured 8 s against 0.4 s for a few thousand rows on 2 CPUs.
        ds.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        ds = ds.map_batches(_named(to_rows, "band_keys"), batch_size=1, batch_format="pyarrow")
        ds = ds.groupby("partition", num_partitions=partitions).map_groups(_named(edges, "bucket_edges"),
                                                                           batch_format="numpy")
        found = [np.stack([b["u"], b["v"]], axis=1) for b in ds.iter_batches(batch_size=None, batch_format="numpy")
                 if len(b.get("u", ()))]
        return minhash.unique_edges(np.concatenate(found) if found else np.zeros((0, 2), np.int64))

    def score(self, make_scorer: Callable, fn: Callable, items: Sequence, desc: str) -> list:
        """[fn(scorer, item) ...] on a pool of `teacher_actors` actors, each building one scorer."""
        import ray.data

        if not len(items):
            return []
        actors = max(1, min(self.config.teacher_actors, len(items)))
        ds = self._items(items).map_batches(
            _ScoreActor, fn_constructor_args=(make_scorer, fn), batch_size=1, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=self.config.teacher_gpus or None,
            num_cpus=self.config.teacher_cpus)
        return _ordered(ds, len(items))

    def close(self) -> None:
        import ray
        import ray.data

        ctx = ray.data.DataContext.get_current()
        for key, value in self._saved_context.items():
            setattr(ctx, key, value)
        if self.started and ray.is_initialized():
            ray.shutdown()
        self.started = False

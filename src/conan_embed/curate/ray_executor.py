"""The Ray Data executor: the curation steps' per-item functions spread over a Ray cluster (design
notes: docs/design-curation.md §7).

It runs the very functions `LocalExecutor` runs, so both write the same files:

* `map`: one Ray Data row per item (a shard, a hash partition), `map_batches` with one item per batch
  (an item is large; the function writes its own outputs atomically and returns a small dict, so a
  retried task is harmless);
* `map_with`: an actor pool of `teacher_actors` actors, `teacher_gpus` GPUs and `teacher_cpus` CPUs
  apiece, each building the resource (a teacher model) once.

Items and results travel as cloudpickled bytes in a binary column (`{"i": index, "item": bytes}`), so
Arrow never converts a dataclass or a dict of lists. An exception in an item is carried back the same
way and re-raised in the driver, the first in item order, with the remote traceback as a note; the
other items finish, so a resumed run has less to do.

Paths are the pipeline's (absolute): on a multi-node cluster, input and output must be on a shared
filesystem (the steps pass their data through files under the output folder).
"""
from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Sequence

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


class _ResourceActor:
    """One worker holding a resource (a teacher model): builds it once, then runs `fn(resource, item)`
    per row."""

    def __init__(self, make_resource: Callable, fn: Callable):
        self.fn = fn
        self.resource = _guarded(make_resource)  # a failure here is reported per item, with its cause

    def __call__(self, batch):
        items = [_loads(b) for b in batch.column("item").to_pylist()]
        if isinstance(self.resource, _Failure):
            results = [self.resource] * len(items)
        else:
            results = [_guarded(self.fn, self.resource, item) for item in items]
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

    def map_with(self, make_resource: Callable, fn: Callable, items: Sequence, desc: str) -> list:
        """[fn(resource, item) ...] on a pool of `teacher_actors` actors, each building one resource."""
        import ray.data

        if not len(items):
            return []
        actors = max(1, min(self.config.teacher_actors, len(items)))
        ds = self._items(items).map_batches(
            _ResourceActor, fn_constructor_args=(make_resource, fn), batch_size=1, batch_format="pyarrow",
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

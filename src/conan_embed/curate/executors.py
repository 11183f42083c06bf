"""Executors: where the curation steps' per-item work runs. The steps (curation_steps.py) decide *what*
runs; an executor only maps a function over items (shards, hash partitions), `map_with` a per-worker
resource such as a teacher model, so every executor produces the same files and knows no stage.

`LocalExecutor` uses processes on this machine (`fork`: the CPU stages need no torch) and builds the
resource in the main process; `RayExecutor` (ray_executor.py) spreads the same functions over a cluster.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence

_TASK: Callable | None = None  # the function a forked worker calls (inherited, never pickled)


def _call(item):
    return _TASK(item)


def _progress(items, desc: str, show: bool):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="shard", disable=not show, leave=False)


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int | None = None, show_progress: bool = True):
        self.workers = workers or os.cpu_count() or 1
        self.show_progress = show_progress

    def map(self, fn: Callable, items: Sequence, desc: str) -> list:
        """[fn(item) for item in items], in worker processes when there are several."""
        global _TASK
        workers = min(self.workers, len(items))
        if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
            return [fn(item) for item in _progress(items, desc, self.show_progress)]
        _TASK = fn
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                return list(_progress(pool.imap(_call, items), desc, self.show_progress))
        finally:
            _TASK = None

    def map_with(self, make_resource: Callable, fn: Callable, items: Sequence, desc: str) -> list:
        """[fn(resource, item) for item in items] with one resource (a teacher model) built once, in
        this process (a model wants the whole machine, or its GPU, rather than a copy per process);
        not built when there is nothing to do."""
        resource = None
        results = []
        for item in items:
            if resource is None:
                resource = make_resource()
            results.append(fn(resource, item))
        return results

    def close(self) -> None:
        pass


def make_executor(config, show_progress: bool = True):
    if config.name == "ray":
        from conan_embed.curate.ray_executor import RayExecutor

        return RayExecutor(config, show_progress=show_progress)
    return LocalExecutor(config.workers, show_progress=show_progress)

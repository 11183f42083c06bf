"""Executors: where the pipeline's per-shard work runs. The pipeline (pipeline.py) decides *what* runs;
an executor only maps functions over shards, so every executor produces the same files.

`LocalExecutor` uses processes on this machine (`fork`: the CPU stages need no torch) and runs the
teacher in the main process; `RayExecutor` (ray_executor.py) spreads the same functions over a cluster.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence

import numpy as np

from conan_embed.curate import minhash

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

    def candidate_edges(self, band_keys: Callable[[str], tuple[np.ndarray, np.ndarray]], parts: Sequence[str],
                        drop: np.ndarray) -> np.ndarray:
        """LSH candidate edges over all parts; `band_keys(part)` -> (gids, (bands, n) keys); rows whose
        gid is in `drop` (exact duplicates) take no part."""
        gids, keys = zip(*(band_keys(p) for p in parts)) if parts else ((), ())
        gid = np.concatenate(gids) if gids else np.zeros(0, np.int64)
        key = np.concatenate(keys, axis=1) if keys else np.zeros((0, 0), np.uint64)
        keep = ~np.isin(gid, drop)
        return minhash.candidate_edges(key[:, keep], gid[keep])

    def score(self, make_scorer: Callable, fn: Callable, items: Sequence, desc: str) -> list:
        """[fn(scorer, item) ...] with one scorer (a teacher model) built once, in this process."""
        scorer = None
        results = []
        for item in items:
            if scorer is None:
                scorer = make_scorer()
            results.append(fn(scorer, item))
        return results

    def close(self) -> None:
        pass


def make_executor(config, show_progress: bool = True):
    if config.name == "ray":
        from conan_embed.curate.ray_executor import RayExecutor

        return RayExecutor(config, show_progress=show_progress)
    return LocalExecutor(config.workers, show_progress=show_progress)

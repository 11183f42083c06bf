"""Run by test_distributed.py as a script: two gloo processes (spawned, as assets.md advises), each
observing different rows, then one check with S_initial measured across both; each saves its state."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np


def stub_encoder(texts, field, task=None):
    """Deterministic text -> vector (same in every process), standing in for the model."""
    import torch

    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(f"{field}:{text}".encode()).digest()[:4], "little")
        rows.append(torch.from_numpy(np.random.default_rng(seed).standard_normal(16).astype(np.float32)))
    return torch.stack(rows)


class State:
    def __init__(self, step, rank):
        self.global_step, self.max_steps, self.is_world_process_zero = step, 10, rank == 0


def build_miner(recipe_path: str):
    from conan_embed.mining import DynamicHardNegativeMiner
    from conan_embed.recipe.schema import load_recipe
    from conan_embed.training.training_tasks import load_tasks

    recipe = load_recipe(recipe_path)
    stage = recipe.stages["finetune"]
    miner = DynamicHardNegativeMiner(load_tasks(stage.tasks, recipe.data.dir), stage.mining)
    miner.attach_encoder(stub_encoder)
    return miner


def records_of(rank: int):
    """Rank r saw rows r, r+2, r+4, ... twice: first at 0.7 (S_initial), then lower (S_now)."""
    import torch

    from conan_embed.training.trainer import StepRecord

    rows = tuple(range(rank, 20, 2))
    first = StepRecord("retrieval", rows, list(rows), 1.0, torch.full((len(rows),), 0.9), torch.full((len(rows),), 0.7))
    later = StepRecord("retrieval", rows, list(rows), 1.0, torch.full((len(rows),), 0.9),
                       torch.tensor([0.3 + 0.05 * (r % 5) for r in rows]))
    return [first], [later]


def worker(rank: int, world: int, recipe_path: str, out: str, port: int) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        miner = build_miner(recipe_path)
        first, later = records_of(rank)
        miner.on_step_records(None, State(1, rank), first)
        miner.on_step_records(None, State(2, rank), later)  # check_every 2: the check runs here
        folder = Path(out) / f"rank{rank}"
        folder.mkdir(parents=True, exist_ok=True)
        miner.save(folder)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # skip the interpreter's teardown: gloo's threads sometimes abort there ("terminate called without an
    # active exception", SIGABRT) after the work is done and saved
    import os

    os._exit(0)


if __name__ == "__main__":
    import torch.multiprocessing as mp

    recipe_path, out, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    mp.spawn(worker, args=(2, recipe_path, out, port), nprocs=2, join=True)

"""Run by test_cbb.py and test_global_negatives.py as a script: one fine-tune stage on W spawned gloo
processes, the way torchrun would start them (RANK / WORLD_SIZE / MASTER_* in the environment; Hugging
Face sets up the group)."""

from __future__ import annotations

import os
import sys


def worker(rank: int, world: int, recipe_path: str, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist

    from conan_embed.recipe.schema import load_recipe
    from conan_embed.recipe.stage_training import train_stage

    train_stage(load_recipe(recipe_path), "finetune", show_progress=False)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    recipe_path, world, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    mp.spawn(worker, args=(world, recipe_path, port), nprocs=world, join=True)

"""Run by test_cbb_composition.py as a script: W gloo processes each build the CBB stage's trainer, take
their own part of the first step (its loss and backward, no optimizer), average the gradients as
data-parallel training does, and rank 0 saves the mean loss and the averaged gradients. Each also checks
the gather order of CBB's negatives: entry k of the gathered shares is rank k's."""

from __future__ import annotations

import os
import sys


def worker(rank: int, world: int, recipe_path: str, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist

    from conan_embed.recipe.schema import load_recipe
    from conan_embed.training.launch import init_from_launch
    from conan_embed.recipe.stage_training import build_trainer

    init_from_launch()
    try:
        trainer = build_trainer(load_recipe(recipe_path), "finetune")
        trainer.current_gradient_accumulation_steps = 1  # set by train() otherwise
        parts = list(trainer.composer)[rank][0]  # accelerate gives process r every W-th micro-batch from r
        loss = trainer.training_step(trainer.model, {"plan": parts})
        grads = {n: p.grad if p.grad is not None else torch.zeros_like(p)
                 for n, p in trainer.model.named_parameters() if p.requires_grad}
        for grad in grads.values():
            dist.all_reduce(grad)
            grad /= world
        total = loss.detach().reshape(1).clone()
        dist.all_reduce(total)

        task = next(t for t in trainer.tasks.values() if t.kind == "retrieval")
        b, k = task.config.batch_size, task.config.negatives.count // trainer.composer.shares
        d = trainer.model.get_embedding_dimension()
        if trainer.composer.roles[rank].retrieval:
            local = torch.full((1, b, k, d), float(rank))
            local[0, :, :, 0] = torch.arange(b, dtype=torch.float)[:, None]  # row i of rank r: [i, r, r, ...]
        else:
            local = None
        shares = trainer.gather_shares(local, task)
        assert shares.shape == (trainer.composer.shares, b, k, d), shares.shape
        for r in range(trainer.composer.shares):
            assert (shares[r, :, :, 1:] == r).all(), f"gathered share {r} is not retrieval rank {r}'s"
            assert (shares[r, :, 0, 0] == torch.arange(b)).all(), f"share {r}'s rows are out of order"
        if rank == 0:
            torch.save({"loss": float(total) / world, "grads": grads}, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    recipe_path, world, port, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    mp.spawn(worker, args=(world, recipe_path, port, out), nprocs=world, join=True)

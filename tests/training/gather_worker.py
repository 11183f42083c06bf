"""Run by test_global_negatives.py as a script: 2 gloo processes gather rows of different counts with
`gather_rows` and check, each on its own, that its queries' targets are its own rows."""

from __future__ import annotations

import os
import sys

ROWS = (3, 2)  # rank 0 holds 3 rows, rank 1 holds 2; both pad to WIDTH
WIDTH = 3


def row_code(rank: int, i: int) -> float:
    """A value that names a row: rank 1's row 0 is 10.0, rank 0's row 2 is 2.0."""
    return 10.0 * rank + i


def worker(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist

    from conan_embed.training.distributed import gather_rows

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows = ROWS[rank]
        # positive row i: [code, 1]; its K=2 negatives: [code, -1], [code, -2]
        codes = torch.tensor([row_code(rank, i) for i in range(rows)])
        positive = torch.stack([codes, torch.ones(rows)], 1).requires_grad_()
        negatives = torch.stack([torch.stack([codes, -torch.ones(rows)], 1), torch.stack([codes, -2 * torch.ones(rows)], 1)], 1)
        p, n, offset, valid, scale = gather_rows(positive, negatives, WIDTH)
        assert p.shape == (world * WIDTH, 2) and n.shape == (world * WIDTH, 2, 2), (p.shape, n.shape)
        assert offset == rank * WIDTH, offset
        for i in range(rows):  # the target of query i is this process's row i: positive and negatives
            assert p[offset + i, 0].item() == row_code(rank, i), (rank, i, p[:, 0].tolist())
            assert n[offset + i, :, 0].tolist() == [row_code(rank, i)] * 2
        assert valid.tolist() == [True, True, True, True, True, False], valid.tolist()
        assert scale == world * rows / sum(ROWS), scale
        # gradients flow back to each process's own rows only, summed over every process's use of them
        (p[:, 0] * torch.arange(1.0, world * WIDTH + 1)).sum().backward()
        expected = [float(world * (rank * WIDTH + i + 1)) for i in range(rows)]
        assert positive.grad[:, 0].tolist() == expected, (positive.grad[:, 0].tolist(), expected)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(2, int(sys.argv[1])), nprocs=2, join=True)

"""Starting and joining several training processes: what torchrun, the DeepSpeed launcher and
`conan-embed ... --nproc N` set up, and the waits that keep work outside training on rank 0.
"""

from __future__ import annotations


def launched_rank_and_world() -> tuple[int, int]:
    """(rank, world size) as the launcher set them (torchrun, the deepspeed launcher, `--nproc`); (0, 1) alone."""
    import os

    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_from_launch() -> None:
    """Join the launcher's process group (gloo on CPU, NCCL on GPUs) if there is one and it is not
    joined yet, so that work outside training (data, mining, evaluation) can wait for rank 0.
    Hugging Face's Trainer reuses the group."""
    import torch
    import torch.distributed as dist

    if launched_rank_and_world()[1] > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            import os

            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def launch_local(fn, nproc: int, *args) -> None:
    """Run `fn(*args)` in `nproc` processes on this machine, as `torchrun --nproc_per_node nproc` would
    (the environment it sets, a free loopback port). Spawned, not forked: torch is already imported."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_launched, args=(nproc, port, fn, args), nprocs=nproc, join=True)


def _launched(rank: int, world: int, port: int, fn, args) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world)))  # as torchrun does
    try:
        code = fn(*args)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if code:
        raise SystemExit(code)

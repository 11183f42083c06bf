"""Cached losses (GradCache): the loss and gradients of a large batch at the memory of a mini-batch.

Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (RepL4NLP
2021). A contrastive loss couples every example of the batch, so the batch cannot simply be split
into gradient-accumulation steps; but the loss only sees the embeddings, which are small. So:

1. embed the batch in mini-batches of `mini_batch_size` texts **without** gradients (no activations
   kept), snapshotting the random state before each mini-batch;
2. compute the loss on the whole batch from those embeddings (detached leaves) and back-propagate it
   to the embeddings only: dL/de for every text, cheap;
3. when the trainer back-propagates the returned loss, a hook re-embeds each mini-batch **with**
   gradients, under its snapshotted random state (the same dropout masks as in 1: the two passes
   agree exactly) and the autocast setting of 1, and back-propagates <e, dL/de> · grad_output.

The parameter gradients equal the uncached loss's (tests/training/test_gradcache.py: ≤ 1e-5 relative
in fp32); the peak memory is one mini-batch's activations plus the batch's embeddings. The price is
one extra forward pass without gradients (about a third more compute; benchmarks/train_memory.py).

Random state and resume: the snapshots live only within one micro-batch (taken in 1, used in 3, and
restored inside `torch.random.fork_rng`, so the replay leaves the generator where 1 left it). A run
resumed from a checkpoint restores the generators at a step boundary, so it draws the same masks.

Whatever multiplies the loss after it leaves here (task weights, CBB scales, 1/grad_accum, an fp16
loss scale) reaches the replay through `grad_output`. Under DistributedDataParallel every
mini-batch but the last is replayed in `no_sync`, so gradients are all-reduced once per loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


class RandomState:
    """The CPU and CUDA generators as they are now; `replay()` runs a block from this state and puts
    the generators back afterwards."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    @contextlib.contextmanager
    def replay(self):
        devices = list(range(len(self.cuda))) if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def _autocast_state(device_type: str):
    return device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


@dataclass
class _Piece:
    texts: list[str]
    embed_args: tuple
    states: list[RandomState]
    leaf: Tensor


class CachedEmbeddings:
    """One micro-batch's GradCache: `embed` (steps 1 and 2's inputs) any number of text lists, build
    the loss from what it returns, then `attach(loss)` (steps 2 and 3).

    `embed_fn(texts, *embed_args)` embeds texts with gradients (the trainer's own `embed`, so the
    cached path tokenises, packs and pools exactly as the uncached one). `model` is what the
    trainer's forward runs (a DistributedDataParallel wrapper gets `no_sync`)."""

    def __init__(self, embed_fn: Callable[..., Tensor], mini_batch_size: int, *, model=None, device_type: str = "cpu"):
        if mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}")
        self.embed_fn, self.mini_batch_size, self.model = embed_fn, mini_batch_size, model
        self.autocast = _autocast_state(device_type)
        self.pieces: list[_Piece] = []

    def chunks(self, texts: list[str]) -> list[list[str]]:
        return [texts[i:i + self.mini_batch_size] for i in range(0, len(texts), self.mini_batch_size)]

    def embed(self, texts: list[str], *embed_args) -> Tensor:
        """Step 1: the texts' embeddings, computed without gradients, as a leaf that collects dL/de."""
        states, parts = [], []
        with torch.no_grad():
            for chunk in self.chunks(texts):
                states.append(RandomState())
                parts.append(self.embed_fn(chunk, *embed_args))
        leaf = torch.cat(parts).detach().requires_grad_()
        self.pieces.append(_Piece(texts, embed_args, states, leaf))
        return leaf

    def attach(self, loss: Tensor) -> Tensor:
        """Step 2 now (loss -> dL/de), step 3 when the returned loss is back-propagated."""
        loss.backward()
        grads = [p.leaf.grad if p.leaf.grad is not None else torch.zeros_like(p.leaf) for p in self.pieces]
        cached = loss.detach().requires_grad_()
        cached.register_hook(lambda grad_output: self._replay(grad_output, grads))
        return cached

    def _replay(self, grad_output: Tensor, grads: list[Tensor]) -> None:
        device_type, enabled, dtype = self.autocast
        ddp = self.model if isinstance(self.model, torch.nn.parallel.DistributedDataParallel) else None
        jobs = [(piece, chunk, state, grad[start:start + len(chunk)])
                for piece, grad in zip(self.pieces, grads)
                for chunk, state, start in zip(self.chunks(piece.texts), piece.states,
                                               range(0, len(piece.texts), self.mini_batch_size))]
        with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
            for index, (piece, chunk, state, grad) in enumerate(jobs):
                last = index == len(jobs) - 1
                sync = contextlib.nullcontext() if ddp is None or last else ddp.no_sync()
                with sync, state.replay():
                    emb = self.embed_fn(chunk, *piece.embed_args)
                    surrogate = torch.dot(emb.flatten().float(), grad.flatten().float()) * grad_output
                    surrogate.backward()
        self.pieces = []

"""The embeddings `mine` caches, and encoding them in shards across processes.

Texts are encoded in chunks of `MineConfig.chunk_size`, each saved atomically under a folder named by a key
of the model's files, the texts, the prompt, the length cap and the precision (`CachedEmbeddings`): an
interrupted `mine` continues from its last finished chunk, and mining again with the same model encodes
nothing.

Several processes (`conan-embed mine --nproc N`, torchrun) split the chunks: process r of N encodes the
contiguous chunks `shard_chunks(chunks, r, N)` into the same folder and then writes a marker
(`done-<r>-of-<N>.json`); rank 0 waits for every marker, and gathers the chunks (`gather`). The folder is
the meeting point, so it works under any launcher (with one machine's disk, or storage all of them see)
and needs no process group. A text's embedding does not depend on the number of processes: every chunk
is encoded by exactly the same calls (the same texts, cut into the same groups of `batch_size` x 8 that
sentence-transformers sorts by length and batches), whoever encodes it, so one process and N processes
write the same bytes (checked by tests/mining/test_mine_processes.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np

from conan_embed.files import atomic_path, write_json
from conan_embed.logs import get_logger
from conan_embed.mining.mining_config import MineConfig

log = get_logger("mine")

CACHE_VERSION = 1
WAIT_LOG_S = 60.0  # how often rank 0 says what it is waiting for


def texts_digest(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def cache_root(config: MineConfig) -> Path:
    if config.cache_dir:
        return Path(config.cache_dir)
    from conan_embed.assets import cache_dir

    return cache_dir() / "embeddings"


def shard_chunks(chunks: int, rank: int, world: int) -> range:
    """The contiguous chunks process `rank` of `world` encodes: the shards cover 0 .. chunks once, in
    order, and differ in size by at most one chunk."""
    return range(rank * chunks // world, (rank + 1) * chunks // world)


class CachedEmbeddings:
    """Normalised float32 embeddings of `texts` as `kind` ("query" / "passage") texts, in the cache."""

    def __init__(self, model, texts: list[str], kind: str, config: MineConfig, *, model_key: str):
        from conan_embed.modeling import text_prompt

        self.model, self.texts, self.kind, self.config = model, texts, kind, config
        self.prompt = text_prompt(model.prompts, kind)
        self.cap = config.max_length.get(kind)
        key_parts = {"version": CACHE_VERSION, "model": model_key, "kind": kind, "prompt": self.prompt,
                     "max_length": self.cap, "precision": config.precision, "texts": texts_digest(texts),
                     "count": len(texts), "chunk_size": config.chunk_size}
        self.key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:32]
        self.folder = cache_root(config) / self.key
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(self.folder / "key.json", key_parts)
        self.chunks = [self.folder / f"chunk-{i:05d}.npy" for i in range(math.ceil(len(texts) / config.chunk_size))]

    def _part(self, i: int) -> list[str]:
        size = self.config.chunk_size
        return self.texts[i * size:(i + 1) * size]

    def _encode_chunk(self, i: int, bar=None) -> None:
        from conan_embed.encode import encode_texts

        # the unit whose texts sentence-transformers sorts by length and batches together: fixed per chunk, so
        # a text's embedding never depends on which process encodes its chunk
        step = max(self.config.batch_size * 8, 1)
        part, out = self._part(i), []
        for at in range(0, len(part), step):
            out.append(encode_texts(self.model, part[at: at + step], prompt=self.prompt, max_length=self.cap,
                                    precision=self.config.precision, batch_size=self.config.batch_size,
                                    show_progress=False))
            if bar is not None:
                bar.update(len(part[at: at + step]))
        save_npy(self.chunks[i], np.concatenate(out))

    def _marker(self, rank: int, world: int) -> Path:
        return self.folder / f"done-{rank}-of-{world}.json"

    def encode(self, rank: int = 0, world: int = 1, *, show_progress: bool = True) -> dict:
        """Encode the chunks of this process's shard that are not in the cache yet; then, with several
        processes, mark the shard done. Returns {"chunks": [first, stop], "texts", "encoded", "seconds"}."""
        from tqdm.auto import tqdm

        start = time.perf_counter()
        own = shard_chunks(len(self.chunks), rank, world)
        todo = [i for i in own if not self.chunks[i].is_file()]
        total = sum(len(self._part(i)) for i in own)
        encoded = sum(len(self._part(i)) for i in todo)
        label = "encode queries" if self.kind == "query" else "encode passages"
        if world > 1:
            label += f" (shard {rank + 1}/{world})"
        with tqdm(total=total, desc=label, unit="text", disable=not show_progress) as bar:
            bar.update(total - encoded)
            for i in todo:
                self._encode_chunk(i, bar)
        done = {"rank": rank, "chunks": [own.start, own.stop], "texts": total, "encoded": encoded,
                "seconds": round(time.perf_counter() - start, 3)}
        if world > 1:
            write_json(self._marker(rank, world), done)
        return done

    def gather(self, world: int = 1, *, poll_s: float = 0.2) -> tuple[np.ndarray, dict]:
        """Every chunk, in order, once every process of `world` has marked its shard done (rank 0 calls
        this after its own `encode`). A chunk still missing then (its folder was cleaned meanwhile) is
        encoded here, with a warning. Returns (embeddings, {"shards": the markers, "filled_in": chunks})."""
        markers = [self._marker(r, world) for r in range(world)] if world > 1 else []
        waited, said = time.perf_counter(), time.perf_counter()
        while waiting := [m for m in markers if not m.is_file()]:
            if time.perf_counter() - said > WAIT_LOG_S:
                said = time.perf_counter()
                log.info(f"waiting {said - waited:.0f} s for {len(waiting)} of {world} processes to encode their "
                         f"shards of the {self.kind}s ({', '.join(m.name for m in waiting[:4])} in {self.folder})")
            time.sleep(poll_s)
        shards = [json.loads(m.read_text()) for m in markers]
        missing = [i for i, f in enumerate(self.chunks) if not f.is_file()]
        if missing:
            log.warning(f"{len(missing)} chunks of {self.folder} were missing after every process finished its "
                        f"shard (first: {self.chunks[missing[0]].name}); encoding them here")
            for i in missing:
                self._encode_chunk(i)
        if not self.chunks:
            return np.zeros((0, 0), np.float32), {"shards": shards, "filled_in": 0}
        return np.concatenate([np.load(f) for f in self.chunks]), {"shards": shards, "filled_in": len(missing)}


def save_npy(path: Path, array: np.ndarray) -> None:
    """np.save, atomically: a reader (a resumed run, another process) sees the whole file or none."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)

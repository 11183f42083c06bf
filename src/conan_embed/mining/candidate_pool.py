"""The candidate pool `mine` writes beside its output, so that training loads 1.8M rows x 200 candidates with
numpy instead of looking up 360M ids one by one (docs/mining.md, "Candidate pools on disk").

`<stem>.candidates.npy`: int32 [rows, top_k], each row's candidates as positions in the corpus file, best
first, -1 padded; the same lists as the rows' `candidates` ids, which stay in the JSONL for people and other
tools. `<stem>.candidates.json`: the sha256 of the data file, of the corpus file and of the matrix, the
corpus size and the shape. A training task uses the matrix only when all of them match (otherwise it warns,
naming the file, and reads the lists), so the pool can never disagree with the file it sits beside. The
reader is `conan_embed.training.training_tasks.load_candidate_pool`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conan_embed.files import content_digest, write_json
from conan_embed.mining.embedding_cache import save_npy
from conan_embed.training.training_tasks import POOL_FORMAT, POOL_VERSION, array_digest, candidate_pool_paths


def pool_matrix(lists: list, width: int, corpus_positions: np.ndarray | None = None) -> np.ndarray:
    """[rows, width] int32, -1 padded, from per-row lists of indices; `corpus_positions` maps them to
    positions in the corpus file (when the ranking covered part of it)."""
    matrix = np.full((len(lists), width), -1, dtype=np.int32)
    for r, kept in enumerate(lists):
        if len(kept):
            kept = np.asarray(kept, dtype=np.int64)
            matrix[r, :len(kept)] = kept if corpus_positions is None else corpus_positions[kept]
    return matrix


def remove_candidate_pool(path: str | Path) -> None:
    for file in candidate_pool_paths(path):
        file.unlink(missing_ok=True)


def write_candidate_pool(path: str | Path, matrix: np.ndarray, corpus_path: str | Path, *, corpus_size: int,
                         candidates_last: bool = True) -> Path:
    """Write `matrix` as the candidate pool of the data file `path` (already written) over `corpus_path`; the
    description goes last, so a crash in between leaves no pool that seems to belong. `candidates_last`: every
    row of the JSONL file has `candidates` as its last key (training then parses the rows without them)."""
    matrix = np.ascontiguousarray(matrix, dtype=np.int32)
    matrix_path, meta_path = candidate_pool_paths(path)
    meta_path.unlink(missing_ok=True)
    save_npy(matrix_path, matrix)
    write_json(meta_path, {"format": POOL_FORMAT, "version": POOL_VERSION, "rows": int(matrix.shape[0]),
                           "width": int(matrix.shape[1]), "dtype": "int32", "file": Path(path).name,
                           "file_sha256": content_digest(path), "corpus": str(corpus_path),
                           "corpus_size": int(corpus_size), "corpus_sha256": content_digest(corpus_path),
                           "matrix_sha256": array_digest(matrix), "candidates_last": candidates_last})
    return matrix_path

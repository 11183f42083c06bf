"""Training tasks: the rows of one data file, and how a planned batch of them becomes texts.

Three kinds (docs/training.md):
- ``pairs``: weak (query, passage) pairs; InfoNCE with in-batch negatives (paper Eq. 1).
- ``retrieval``: (query, positives, candidates | negatives); InfoNCE with in-batch and hard negatives.
  Hard negatives are the candidate ids ranked ``skip_top`` .. ``skip_top + count`` (the paper skips the
  top 10: near the top of a ranked list sit unlabelled positives), looked up in the corpus file, or
  the first ``count`` of a row's own ``negatives`` texts.
- ``sts``: (text1, text2, score); CoSENT.

A batch's texts are a pure function of its plan (task, rows, epoch) and the rows' current hard
negatives, so resolving them at step time (not in a data-loader worker ahead of time) keeps resume
exact and lets dynamic hard-negative mining (conan_embed.mining) change a row's negatives between two
steps.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conan_embed.data.records import fixed_sample, read_corpus, read_records, validate_record
from conan_embed.errors import InputError
from conan_embed.files import content_digest
from conan_embed.logs import get_logger
from conan_embed.training.training_config import TaskConfig

log = get_logger("train")

RECORD_KIND = {"pairs": "weak_pair", "retrieval": "retrieval", "sts": "sts"}
# the candidate pool `conan-embed mine` writes beside its output (docs/mining.md, "Candidate pools on disk")
POOL_FORMAT, POOL_VERSION = "conan-embed candidate pool", 1


@dataclass(frozen=True)
class StepPlan:
    """Which rows of which task one process trains on in one micro-batch (a micro-batch may hold one
    plan per task: cross-GPU batch balance). Every random choice is in here (rows come from the
    composer's seeded permutation; the positive picked for a row cycles with the epoch)."""

    task: str
    rows: tuple[int, ...]
    epoch: int = 0
    # cbb: which of `share_count` equal shares of each row's hard negatives this process embeds
    shares: tuple[int, ...] | None = None  # None: all of them
    share_count: int = 1


@dataclass
class TaskBatch:
    """The texts of one planned micro-batch."""

    task: str
    ids: list  # one id per row (the row's `id`, or its row index)
    queries: list[str]
    passages: list[str]  # positives (pairs / retrieval) or text2 (sts)
    negatives: list[list[str]] | None = None  # retrieval: `count` texts per row
    negative_ids: list[list] | None = None
    labels: list[float] | None = None  # sts scores


class TrainingTask:
    """One task of a stage: its config and its validated rows.

    Retrieval rows that name candidate ids keep them as a matrix of corpus indices (`candidates`,
    [rows, longest list], -1 padded): the row's positives (by id and by identical text) and repeated
    ids are dropped at load, so no window of the list, static or mined, ever holds a positive.
    """

    def __init__(self, name: str, config: TaskConfig, data_dir: str | Path, *, key: str = "tasks"):
        self.name, self.config, self.kind = name, config, config.kind
        path = Path(data_dir) / config.file
        if not path.exists():
            raise InputError(f"{key}.{name}.file: no such data file or folder", path=path, field=f"{key}.{name}.file")
        self.path = path
        self.corpus_ids: list[str] = []
        self.corpus_texts: list[str] = []
        pool = self._candidate_pool(data_dir, key) if self.kind == "retrieval" else None
        rows = list(self._read_rows(pool))
        if pool is not None and len(rows) != pool[1]["rows"]:
            raise InputError(f"{len(rows)} rows, but its candidate pool {candidate_pool_paths(path)[1].name} says "
                             f"{pool[1]['rows']}: delete {candidate_pool_paths(path)[0].name} and its .json",
                             path=path)
        self.row_numbers = np.arange(1, len(rows) + 1)  # 1-based file rows, for messages
        if config.max_rows is not None and config.max_rows < len(rows):
            keep = fixed_sample(len(rows), config.max_rows)
            rows, self.row_numbers = [rows[i] for i in keep], self.row_numbers[keep]
        self.rows = rows
        if len(self.rows) < config.batch_size:
            raise InputError(f"{key}.{name}: {len(self.rows)} rows, fewer than one batch of {config.batch_size}",
                             path=path, field=f"{key}.{name}.batch_size")
        self.candidates = np.full((len(self.rows), 0), -1, dtype=np.int32)
        self.candidate_counts = np.zeros(len(self.rows), dtype=np.int32)
        if self.kind == "retrieval" and pool is not None:
            self._take_candidate_pool(pool[0])
        elif self.kind == "retrieval":
            self._index_candidates(data_dir, key)

    def _candidate_pool(self, data_dir, key: str) -> tuple[np.ndarray, dict] | None:
        """`mine`'s candidate pool beside the task's file, when there is one and it belongs to this file and
        corpus (the corpus is loaded then)."""
        if self.config.corpus is None or not any(p.exists() for p in candidate_pool_paths(self.path)):
            return None
        corpus_path = Path(data_dir) / self.config.corpus
        if not corpus_path.is_file():
            return None  # the JSONL path names the missing corpus
        self._load_corpus(data_dir, key)
        return load_candidate_pool(self.path, corpus_path, len(self.corpus_ids))

    def _read_rows(self, pool) -> Iterator[dict]:
        """The file's rows; with a candidate pool, without their `candidates` lists (the pool holds them)."""
        if pool is None:
            yield from read_records(self.path, RECORD_KIND[self.kind])
        elif pool[1].get("candidates_last") and self.path.is_file() and self.path.suffix == ".jsonl":
            yield from _rows_before_candidates(self.path)
        else:
            for row in read_records(self.path, RECORD_KIND[self.kind]):
                row.pop("candidates", None)
                yield row

    def _take_candidate_pool(self, pool: np.ndarray) -> None:
        """The task's rows of a verified candidate pool: what `_index_candidates` makes of the rows' lists."""
        count, skip = self.config.negatives.count, self.config.negatives.skip_top
        picked = self.row_numbers - 1
        matrix = pool if np.array_equal(picked, np.arange(len(pool))) else pool[picked]
        counts = (matrix >= 0).sum(axis=1, dtype=np.int32)
        short = np.flatnonzero(counts < skip + count)
        if len(short):
            r = int(short[0])
            raise InputError(f"{counts[r]} usable candidates (in {candidate_pool_paths(self.path)[0].name}); "
                             f"negatives.skip_top {skip} + count {count} needs {skip + count}", path=self.path,
                             row=int(self.row_numbers[r]), field="candidates")
        width = int(counts.max(initial=0))
        self.candidates = matrix if width == matrix.shape[1] else np.ascontiguousarray(matrix[:, :width])
        self.candidate_counts = counts

    def _index_candidates(self, data_dir, key: str) -> None:
        count, skip = self.config.negatives.count, self.config.negatives.skip_top
        if any(r.get("candidates") is not None for r in self.rows) and not self.corpus_ids:
            self._load_corpus(data_dir, key)
        index = {cid: i for i, cid in enumerate(self.corpus_ids)}
        by_text: dict[str, list[int]] = {}
        for i, text in enumerate(self.corpus_texts):
            by_text.setdefault(text, []).append(i)
        lists = []
        for r, row in enumerate(self.rows):
            number = int(self.row_numbers[r])
            candidates = row.pop("candidates", None)
            if candidates is None:
                if len(row.get("negatives") or []) < count:
                    raise InputError(f"{len(row.get('negatives') or [])} negatives, negatives.count is {count}",
                                     path=self.path, row=number, field="negatives")
                lists.append(())
                continue
            excluded = {index[str(p)] for p in row.get("positive_ids") or () if str(p) in index}
            excluded.update(i for text in row["positives"] for i in by_text.get(text, ()))
            kept, seen = [], set()
            for c in candidates:
                j = index.get(str(c))
                if j is None:
                    raise InputError(f"candidate id {str(c)!r} is not in {self.config.corpus}", path=self.path,
                                     row=number, field="candidates")
                if j not in excluded and j not in seen:
                    seen.add(j)
                    kept.append(j)
            if len(kept) < skip + count:
                dropped = len(candidates) - len(kept)
                raise InputError(f"{len(kept)} usable candidates ({len(candidates)} listed, {dropped} positives or "
                                 f"repeats dropped); negatives.skip_top {skip} + count {count} needs {skip + count}",
                                 path=self.path, row=number, field="candidates")
            lists.append(kept)
        width = max((len(x) for x in lists), default=0)
        self.candidates = np.full((len(self.rows), width), -1, dtype=np.int32)
        for r, kept in enumerate(lists):
            self.candidates[r, :len(kept)] = kept
            self.candidate_counts[r] = len(kept)

    def _load_corpus(self, data_dir, key: str) -> None:
        if self.config.corpus is None:
            raise InputError(f"{key}.{self.name}.corpus is needed: the rows name candidate ids",
                             path=self.path, field=f"{key}.{self.name}.corpus")
        corpus_path = Path(data_dir) / self.config.corpus
        if not corpus_path.is_file():
            raise InputError(f"{key}.{self.name}.corpus: no such data file", path=corpus_path,
                             field=f"{key}.{self.name}.corpus")
        self.corpus_ids, self.corpus_texts = read_corpus(corpus_path)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def has_candidates(self) -> bool:
        return bool((self.candidate_counts > 0).any())

    def conflict_keys(self, index: int) -> tuple:
        """Texts (or ids) that must not appear twice in one in-batch-negative batch: a duplicate would be
        scored as a negative of its own twin."""
        row = self.rows[index]
        if self.kind == "pairs":
            return ("q", row["query"]), ("p", row["passage"])
        if self.kind == "retrieval":
            pos = row.get("positive_ids") or row["positives"]
            return (("q", row["query"]),) + tuple(("p", str(p)) for p in pos)
        return ()

    def negative_window(self, index: int) -> np.ndarray:
        """Corpus indices of a row's static hard negatives: its first window, candidates ranked
        skip_top .. skip_top + count (empty for rows that carry negative texts)."""
        cfg = self.config.negatives
        if not self.candidate_counts[index]:
            return self.candidates[index, :0]
        return self.candidates[index, cfg.skip_top: cfg.skip_top + cfg.count]

    def texts(self, plan: StepPlan, negatives: np.ndarray | None = None) -> TaskBatch:
        """The plan's texts. `negatives` ([rows, count] corpus indices, -1 = the row's own static
        negatives) overrides the static window: the dynamic hard-negative miner's current sets."""
        rows = [self.rows[i] for i in plan.rows]
        ids = [r.get("id", i) for r, i in zip(rows, plan.rows)]
        if self.kind == "sts":
            return TaskBatch(self.name, ids, [r["text1"] for r in rows], [r["text2"] for r in rows],
                             labels=[float(r["score"]) for r in rows])
        if self.kind == "pairs":
            return TaskBatch(self.name, ids, [r["query"] for r in rows], [r["passage"] for r in rows])
        positives = [r["positives"][plan.epoch % len(r["positives"])] for r in rows]
        count = self.config.negatives.count
        negative_ids, texts = [], []
        for k, (i, r) in enumerate(zip(plan.rows, rows)):
            window = negatives[k] if negatives is not None and negatives[k][0] >= 0 else self.negative_window(i)
            if len(window):
                ids_, texts_ = [self.corpus_ids[j] for j in window], [self.corpus_texts[j] for j in window]
            else:
                ids_, texts_ = list(range(count)), r["negatives"][:count]
            negative_ids.append(_shares(ids_, plan))
            texts.append(_shares(texts_, plan))
        return TaskBatch(self.name, ids, [r["query"] for r in rows], positives, texts, negative_ids)


def _shares(items: list, plan: StepPlan) -> list:
    """The plan's shares of a row's negatives (share s of m: items s·n/m .. (s+1)·n/m)."""
    if plan.shares is None:
        return items
    size = len(items) // plan.share_count
    return [x for s in plan.shares for x in items[s * size:(s + 1) * size]]


def candidate_pool_paths(path: str | Path) -> tuple[Path, Path]:
    """Where `conan-embed mine` keeps the candidate pool of its output file `path` (docs/mining.md):
    `<stem>.candidates.npy`, an int32 matrix [rows, top_k] of corpus indices (positions in the corpus file),
    rows in file order, best first, -1 padded; and `<stem>.candidates.json`, what it belongs to."""
    path = Path(path)
    stem = path.name.split(".")[0]
    return path.with_name(f"{stem}.candidates.npy"), path.with_name(f"{stem}.candidates.json")


def array_digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def load_candidate_pool(path: str | Path, corpus_path: str | Path, corpus_size: int) -> tuple[np.ndarray, dict] | None:
    """(matrix, description) of the candidate pool beside the data file `path` if it was written with this
    very file (sha256 of its bytes) and corpus (sha256, size) and is intact; None otherwise, with a warning
    naming it when it is there but does not belong (the rows' `candidates` lists are used instead)."""
    matrix_path, meta_path = candidate_pool_paths(path)
    if not matrix_path.exists() and not meta_path.exists():
        return None
    problem, matrix, meta = None, None, {}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problem = f"{meta_path.name} cannot be read ({exc})"
    if problem is None:
        problem = _pool_problem(meta, Path(path), Path(corpus_path), corpus_size)
    if problem is None:
        try:
            matrix = np.load(matrix_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            problem = f"{matrix_path.name} cannot be read ({exc})"
    if problem is None:
        problem = _matrix_problem(matrix, meta, corpus_size)
    if problem is not None:
        log.warning(f"ignoring the candidate pool {matrix_path}: {problem}; using the `candidates` lists of {path} "
                    f"(slower; `conan-embed mine` writes a new pool)")
        return None
    return matrix, meta


def _pool_problem(meta: dict, path: Path, corpus_path: Path, corpus_size: int) -> str | None:
    if not isinstance(meta, dict) or meta.get("format") != POOL_FORMAT or meta.get("version") != POOL_VERSION:
        return f"not a version-{POOL_VERSION} candidate pool description"
    if meta.get("corpus_size") != corpus_size:
        return f"written for a corpus of {meta.get('corpus_size')} passages, {corpus_path} has {corpus_size}"
    if meta.get("corpus_sha256") != content_digest(corpus_path):
        return f"written for another corpus than {corpus_path} (its content differs)"
    if meta.get("file_sha256") != content_digest(path):
        return f"written for another version of {path.name} (its content differs)"
    return None


def _matrix_problem(matrix: np.ndarray, meta: dict, corpus_size: int) -> str | None:
    if matrix.dtype != np.int32 or matrix.ndim != 2 or matrix.shape[0] != meta.get("rows"):
        return f"expected an int32 matrix of {meta.get('rows')} rows, found {matrix.dtype} {matrix.shape}"
    if array_digest(matrix) != meta.get("matrix_sha256"):
        return "its content differs from what was written (sha256)"
    valid = matrix >= 0
    if matrix.size and (matrix.min() < -1 or matrix.max() >= corpus_size or (valid[:, 1:] & ~valid[:, :-1]).any()):
        return f"holds indices outside -1 .. {corpus_size - 1} or a -1 before an index"
    return None


def _rows_before_candidates(path: Path) -> Iterator[dict]:
    """The rows of a JSONL file `mine` wrote, each parsed without its `candidates` list: mine writes it last,
    and json.dumps escapes every quote inside strings, so the key's last occurrence on the line is it."""
    marker = b', "candidates": ['
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            cut = line.rfind(marker)
            row = json.loads(line[:cut] + b"}" if cut >= 0 else line)
            row.pop("candidates", None)
            yield validate_record(row, "retrieval_query", path=path, row_number=number)


def load_tasks(tasks: dict[str, TaskConfig], data_dir: str | Path, *, key: str = "tasks") -> dict[str, TrainingTask]:
    return {name: TrainingTask(name, cfg, data_dir, key=key) for name, cfg in tasks.items()}

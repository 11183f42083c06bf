"""Record schemas (design.md §4) and their JSONL / Parquet readers and writers.

Every stage reads and writes plain files so it can be re-run or replaced. Readers validate each
row and fail with the file, the row number (1-based) and the field at fault.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from conan_embed.errors import InputError
from conan_embed.files import atomic_path

# kind -> {field: (type check, required)}
_TEXT, _TEXTS, _NUMBER, _IDS = "text", "texts", "number", "ids"
SCHEMAS: dict[str, dict[str, tuple[str, bool]]] = {
    "weak_pair": {"query": (_TEXT, True), "passage": (_TEXT, True), "id": ("any", False),
                  "source": ("any", False), "score": (_NUMBER, False)},
    "retrieval": {"id": ("any", True), "query": (_TEXT, True), "positives": (_TEXTS, True),
                  "negatives": (_TEXTS, False), "candidates": (_IDS, False), "task": ("any", False)},
    "corpus": {"id": ("any", True), "text": (_TEXT, True)},
    # a retrieval row before mining has given it candidates (`conan-embed mine` input)
    "retrieval_query": {"id": ("any", True), "query": (_TEXT, True), "positives": (_TEXTS, True),
                        "positive_ids": (_IDS, False), "negatives": (_TEXTS, False), "candidates": (_IDS, False)},
    "sts": {"text1": (_TEXT, True), "text2": (_TEXT, True), "score": (_NUMBER, True)},
}


def _check(value, check: str) -> str | None:
    """None if `value` passes `check`, else what is wrong with it."""
    if check == _TEXT:
        return None if isinstance(value, str) and value.strip() else "must be a non-empty string"
    if check == _TEXTS:
        ok = isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value)
        return None if ok else "must be a non-empty list of non-empty strings"
    if check == _IDS:
        ok = isinstance(value, list) and all(isinstance(v, (str, int)) for v in value)
        return None if ok else "must be a list of ids"
    if check == _NUMBER:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "must be a finite number"
    return None


def validate_record(row, kind: str, *, path=None, row_number: int | None = None) -> dict:
    if kind not in SCHEMAS:
        raise InputError(f"unknown record kind {kind!r}; known: {', '.join(SCHEMAS)}")
    if not isinstance(row, dict):
        raise InputError(f"expected a JSON object, got {type(row).__name__}", path=path, row=row_number)
    for name, (check, required) in SCHEMAS[kind].items():
        if name not in row or row[name] is None:
            if required:
                raise InputError(f"missing field '{name}' (a {kind} record needs "
                                 f"{', '.join(n for n, (_, r) in SCHEMAS[kind].items() if r)})",
                                 path=path, row=row_number, field=name)
            continue
        problem = _check(row[name], check)
        if problem:
            raise InputError(f"field '{name}' {problem}, got {row[name]!r:.80}", path=path, row=row_number,
                             field=name)
    if kind == "retrieval" and not (row.get("negatives") or row.get("candidates") is not None):
        raise InputError("a retrieval record needs 'negatives' (texts) or 'candidates' (corpus ids)",
                         path=path, row=row_number, field="negatives")
    return row


def fixed_sample(n: int, k: int | None) -> list[int]:
    """The sorted indices of one fixed random sample of k of n rows (all of them when k is None or >= n).

    The same sample whatever the run's seed, so that a training task's `max_rows` and the mine step's
    `max_rows` pick the same rows and runs with several seeds train on the same data.
    """
    if k is None or k >= n:
        return list(range(n))
    import random

    return sorted(random.Random(0).sample(range(n), k))


def read_corpus(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(ids as strings, texts) of a corpus file; an id given twice is an error naming its row."""
    ids, texts, seen = [], [], set()
    for number, row in enumerate(read_records(path, "corpus"), 1):
        cid = str(row["id"])
        if cid in seen:
            raise InputError(f"id {cid!r} appears twice in the corpus", path=path, row=number, field="id")
        seen.add(cid)
        ids.append(cid)
        texts.append(row["text"])
    return ids, texts


def _format(path: Path) -> str:
    suffixes = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffixes in (".jsonl", ".json", ".jsonl.gz"):
        return "jsonl"
    if suffixes == ".parquet":
        return "parquet"
    raise InputError("unsupported file type: use .jsonl or .parquet", path=path)


def data_files(path: str | os.PathLike) -> list[Path]:
    """A data file, or a folder's shards (`part-*.jsonl` / `part-*.parquet`, e.g. curated `kept/`) in order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.startswith("part-") and p.suffix in (".jsonl", ".parquet"))
        if not files:
            raise InputError("folder holds no part-*.jsonl or part-*.parquet files", path=path)
        return files
    if not path.is_file():
        raise InputError("file not found", path=path)
    return [path]


def read_records(path: str | os.PathLike, kind: str | None = None) -> Iterator[dict]:
    """Yield the rows of a JSONL or Parquet file (or a folder of shards), validated against `kind` if given."""
    path = Path(path)
    if path.is_dir():
        for file in data_files(path):
            yield from read_records(file, kind)
        return
    if not path.is_file():
        raise InputError("file not found", path=path)
    fmt = _format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        rows: Iterable = (r for batch in pq.ParquetFile(path).iter_batches() for r in batch.to_pylist())
        for i, row in enumerate(rows, 1):
            yield validate_record(row, kind, path=path, row_number=i) if kind else row
        return
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise InputError(f"not UTF-8 ({exc.reason} at byte {exc.start})", path=path, row=i) from exc
            except json.JSONDecodeError as exc:
                raise InputError(f"invalid JSON ({exc.msg} at column {exc.colno})", path=path, row=i) from exc
            yield validate_record(row, kind, path=path, row_number=i) if kind else row


def _arrow_table(rows: list[dict]):
    import pyarrow as pa

    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # a column with mixed types (ids that are ints in one file, strings in another): JSON-encode it
        mixed = {k for k in {k for r in rows for k in r}
                 if len({type(r[k]) for r in rows if r.get(k) is not None}) > 1}
        return pa.Table.from_pylist([{k: (json.dumps(v, ensure_ascii=False) if k in mixed and v is not None
                                          else v) for k, v in r.items()} for r in rows])


def write_records(path: str | os.PathLike, rows: Iterable[dict], kind: str | None = None) -> int:
    """Write rows as JSONL or Parquet (by extension), atomically: a crash never leaves half a file;
    returns the row count. Values JSON can't hold (dates from Parquet inputs, ...) are written as text."""
    path = Path(path)
    fmt = _format(path)
    rows = [validate_record(r, kind, path=path, row_number=i) if kind else r for i, r in enumerate(rows, 1)]
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(_arrow_table(rows), tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return len(rows)

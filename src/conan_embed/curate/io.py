"""Lenient reading of raw pair files into shards of Records, and atomic writing of shards.

Unlike `data.records.read_records`, which stops at the first bad row, curation turns a bad row into a
rejected record with a `read:` reason (`invalid_json`, `not_utf8`, `not_an_object`, `missing_field`,
`reserved_field`) and goes on: raw data is messy and nothing may be lost. What cannot be curated at all
(a missing, empty or unsupported file) is an InputError naming the file before any output is written.

Formats: JSONL (`.jsonl`, `.json`, `.jsonl.gz`), Parquet and CSV (a header row).
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from conan_embed.curate.curation_record import REJECT_FIELDS, Record
from conan_embed.errors import InputError

_SURROGATE = re.compile("[\ud800-\udfff]")  # CSV bytes that were not UTF-8 (surrogateescape), or JSON "\\udc80"


def input_format(path: Path) -> str:
    name = path.name.lower()
    for suffix, fmt in ((".jsonl.gz", "jsonl"), (".jsonl", "jsonl"), (".json", "jsonl"), (".parquet", "parquet"),
                        (".csv", "csv")):
        if name.endswith(suffix):
            return fmt
    raise InputError("unsupported file type: use .jsonl, .jsonl.gz, .parquet or .csv", path=path)


@dataclass
class Shard:
    """Rows [start, stop) of one input file; gids start at `gid_start`."""
    index: int
    path: str
    start: int
    stop: int
    gid_start: int
    offset: int = 0  # plain JSONL: byte offset of the shard's first line
    line: int = 1  # plain JSONL: its 1-based line number

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"

    def to_dict(self) -> dict:
        return asdict(self)


def _jsonl_rows(path: Path, shard_rows: int) -> tuple[int, list[tuple[int, int]]]:
    """Non-blank line count, and (byte offset, line number) where each shard starts."""
    starts, count, offset = [], 0, 0
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if raw.strip():
                if count % shard_rows == 0:
                    starts.append((offset, number))
                count += 1
            offset += len(raw)
    return count, starts


def count_rows(path: Path, shard_rows: int) -> tuple[int, list[tuple[int, int]]]:
    fmt = input_format(path)
    if fmt == "jsonl":
        return _jsonl_rows(path, shard_rows)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            n = pq.ParquetFile(path).metadata.num_rows
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise InputError(f"not a readable Parquet file ({exc})", path=path) from exc
        return n, [(0, 1)] * ((n + shard_rows - 1) // shard_rows)
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            return 0, []
        n = sum(1 for _ in reader)
    return n, [(0, 1)] * ((n + shard_rows - 1) // shard_rows)


def plan_shards(inputs: list[str | Path], shard_rows: int) -> list[Shard]:
    """Cut every input into shards of `shard_rows` rows; gids number all rows in input order."""
    if not inputs:
        raise InputError("no input files given")
    shards, gid = [], 0
    for raw in inputs:
        path = Path(raw)
        if not path.is_file():
            raise InputError("input file not found", path=path)
        n, starts = count_rows(path, shard_rows)
        if n == 0:
            raise InputError("empty input file: no rows to curate", path=path)
        for k, (offset, line) in enumerate(starts):
            start = k * shard_rows
            stop = min(start + shard_rows, n)
            shards.append(Shard(len(shards), str(path), start, stop, gid + start, offset, line))
        gid += n
    return shards


def _replace_surrogates(text: str) -> str:
    """Undecodable bytes become U+FFFD, so that the rejected row can be written."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _parse(obj, origin: str, gid: int, fields: dict[str, str]) -> Record:
    """A Record for one decoded row; a rejected one when the row can't be curated."""
    if not isinstance(obj, dict):
        return Record({"raw": json.dumps(obj, ensure_ascii=False)}, gid, origin, "read:not_an_object",
                      f"expected an object, got {type(obj).__name__}")
    reserved = [k for k in REJECT_FIELDS if k in obj]
    if reserved:
        return Record({"raw": json.dumps(obj, ensure_ascii=False, default=str)}, gid, origin, "read:reserved_field",
                      f"field '{reserved[0]}' is reserved for curation output: rename it")
    for name, column in fields.items():
        value = obj.get(column)
        if not isinstance(value, str) or not value.strip():
            what = "missing" if value is None else f"not a non-empty string ({value!r:.40})"
            return Record(obj, gid, origin, "read:missing_field", f"{name} field '{column}' is {what}")
        if _SURROGATE.search(value):
            cleaned = {k: _replace_surrogates(v) if isinstance(v, str) else v for k, v in obj.items()}
            return Record(cleaned, gid, origin, "read:not_utf8", f"field '{column}' holds bytes that are not UTF-8")
    return Record(obj, gid, origin)


def read_shard(shard: Shard, fields: dict[str, str]) -> list[Record]:
    path, fmt = Path(shard.path), input_format(Path(shard.path))
    records: list[Record] = []
    gid = shard.gid_start
    if fmt == "jsonl":
        gz = path.name.endswith(".gz")
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            if not gz:
                f.seek(shard.offset)
            line = shard.line if not gz else 1
            row = shard.start if not gz else 0
            for raw in f:
                number, line = line, line + 1
                if not raw.strip():
                    continue
                if row < shard.start:  # gzip: no seeking, skip to the shard
                    row += 1
                    continue
                if row >= shard.stop:
                    break
                row += 1
                origin = f"{path}:{number}"
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    records.append(Record({"raw": raw.decode("utf-8", "replace").rstrip("\n")}, gid, origin,
                                          "read:not_utf8", f"{exc.reason} at byte {exc.start}"))
                    gid += 1
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    records.append(Record({"raw": text.rstrip("\n")}, gid, origin, "read:invalid_json",
                                          f"{exc.msg} at column {exc.colno}"))
                    gid += 1
                    continue
                records.append(_parse(obj, origin, gid, fields))
                gid += 1
        return records
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path).slice(shard.start, shard.stop - shard.start)
        for k, obj in enumerate(table.to_pylist()):
            records.append(_parse(obj, f"{path}:{shard.start + k + 1}", gid + k, fields))
        return records
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        for k, obj in enumerate(csv.DictReader(f)):
            if k < shard.start:
                continue
            if k >= shard.stop:
                break
            records.append(_parse(obj, f"{path}:{k + 2}", gid, fields))  # +1 header, +1 1-based
            gid += 1
    return records


def read_labelled(path: Path, text_field: str, label_field: str) -> tuple[list[str], list[int]]:
    """(texts, 0/1 labels) of a labelled file for the trainable classifier; strict: names the bad row."""
    shard = plan_shards([path], 1 << 62)[0]
    texts, labels = [], []
    for r in read_shard(shard, {"query": text_field, "passage": text_field}):
        if r.reason is not None:
            raise InputError(f"{r.reason}: {r.detail}", path=r.origin)
        label = r.row.get(label_field)
        if label not in (0, 1, "0", "1", True, False):
            raise InputError(f"field '{label_field}' must be 0 or 1, got {label!r}", path=r.origin, field=label_field)
        texts.append(r.row[text_field])
        labels.append(int(label))
    return texts, labels

"""The input side of `conan-embed import` (docs/data.md, "Bring your own data"): which layout a file
holds, its rows one at a time, and each row turned into this project's training records.

Layouts (detected from the file type and the keys of the first row that fits one):

    flagembedding  {"query", "pos": [...], "neg": [...], "pos_scores", "neg_scores", "prompt", "type"}
    triplet        sentence-transformers anchor|query, positive|passage, negative | negative_1, negative_2, ...
    pair           anchor|query, positive|passage (or sentence1, sentence2 without a score); a 2-column .tsv
    sts            sentence1, sentence2, score

A row that can't become a record raises `Rejected` with a reason code (REASONS) and what was wrong;
the importer writes it to rejected.jsonl and goes on.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from conan_embed.errors import InputError

FORMATS = ("auto", "flagembedding", "st", "pairs")
KINDS = ("auto", "retrieval", "sts", "pairs")
FORMAT_LAYOUTS = {"flagembedding": ("flagembedding",), "st": ("triplet", "pair", "sts"), "pairs": ("pair",)}
# the kinds each layout imports as, the default (--kind auto) first
LAYOUT_KINDS = {"flagembedding": ("retrieval", "pairs"), "triplet": ("retrieval", "pairs"),
                "pair": ("pairs", "retrieval"), "sts": ("sts", "pairs")}
REASONS = {
    "not_utf8": "the line is not UTF-8",
    "invalid_json": "the line is not JSON",
    "not_an_object": "the line is JSON but not an object",
    "missing_field": "a required field is missing or null",
    "wrong_type": "a field has the wrong type (a list where a string belongs, a number for a text, ...)",
    "empty_text": "a text is empty or whitespace",
    "empty_list": "a list that needs one text or more is empty (`pos`, a classification row's `neg`)",
    "bad_score": "a score is not a finite number, or a score list does not match its texts",
    "wrong_columns": "a .tsv line without exactly two tab-separated columns",
}
DETECT_ROWS = 1000  # rows read, at most, to find the first one whose keys fit a layout
_TSV_HEADERS = {b"query\tpassage", b"query\tpositive", b"anchor\tpositive", b"sentence1\tsentence2"}


class Rejected(Exception):
    """A row that can't be imported: `reason` (a REASONS key), `detail`, the `field` at fault if one."""

    def __init__(self, reason: str, detail: str, field: str | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.field = reason, detail, field


@dataclass(frozen=True)
class Source:
    """One input file or saved dataset: where its rows come from and what they become."""

    path: Path
    container: str  # jsonl | tsv | parquet | arrow (a datasets.save_to_disk folder)
    layout: str
    kind: str  # retrieval | sts | pairs
    label: str  # the prefix of the ids of its rows
    columns: dict = field(default_factory=dict)  # layout role -> the file's key


def passage_id(text: str) -> str:
    """A passage's corpus id: 16 hex digits of its BLAKE2b hash (same text, same id, in any import)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def container_of(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            splits = sorted(p.name for p in path.iterdir() if p.is_dir())
            raise InputError(f"a saved DatasetDict: import one split's folder ({', '.join(splits) or 'none found'})",
                             path=path)
        if (path / "state.json").is_file() or (path / "dataset_info.json").is_file():
            return "arrow"
        raise InputError("a folder without dataset_info.json or state.json: not a saved Hugging Face dataset",
                         path=path)
    if not path.is_file():
        raise InputError("file not found", path=path)
    name = path.name.lower()
    for suffixes, container in (((".jsonl", ".json", ".jsonl.gz"), "jsonl"), ((".tsv",), "tsv"),
                                ((".parquet",), "parquet")):
        if name.endswith(suffixes):
            return container
    raise InputError("unknown file type: use .jsonl, .jsonl.gz, .parquet, .tsv or a datasets.save_to_disk folder",
                     path=path, field="format")


def _arrow_files(folder: Path) -> list[Path]:
    state = folder / "state.json"
    if state.is_file():
        return [folder / f["filename"] for f in json.loads(state.read_text(encoding="utf-8")).get("_data_files", [])]
    return sorted(folder.glob("data-*.arrow"))


def raw_rows(path: Path, container: str) -> Iterator[tuple[int, object]]:
    """(row number, raw row) of a file: the line's bytes (JSONL, TSV; blank lines and a TSV header are no
    rows, but count in the numbering) or a dict (Parquet, Arrow). Nothing is parsed here, so that a
    resumed import skips rows cheaply."""
    import pyarrow as pa

    if container in ("jsonl", "tsv"):
        import gzip

        with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if container == "tsv" and number == 1 and line.rstrip(b"\r\n").lower().removeprefix(b"\xef\xbb\xbf") \
                        in _TSV_HEADERS:
                    continue
                yield number, line
        return
    if container == "parquet":
        import pyarrow.parquet as pq

        batches = pq.ParquetFile(path).iter_batches()
    else:
        batches = (b for file in _arrow_files(path) for b in pa.ipc.open_stream(pa.memory_map(str(file))))
    number = 0
    for batch in batches:
        for row in batch.to_pylist():
            number += 1
            yield number, row


def parse(raw, container: str) -> dict:
    """A raw row as a dict (a TSV line as {"query", "passage"}), or Rejected."""
    if isinstance(raw, dict):
        return raw
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark opens some exported files
    except UnicodeDecodeError as exc:
        raise Rejected("not_utf8", f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if container == "tsv":
        cols = text.rstrip("\r\n").split("\t")
        if len(cols) != 2:
            raise Rejected("wrong_columns", f"{len(cols)} tab-separated columns, expected 2 (query, passage)")
        return {"query": cols[0], "passage": cols[1]}
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Rejected("invalid_json", f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise Rejected("not_an_object", f"a JSON {type(row).__name__}, not an object")
    return row


def raw_text(raw) -> object:
    """What rejected.jsonl keeps of a raw row: the row itself, or the line's text (bad bytes escaped)."""
    return raw if isinstance(raw, dict) else raw.decode("utf-8", "backslashreplace").rstrip("\r\n")


def detect_layout(keys) -> tuple[str, dict] | None:
    """(layout, role -> key) for a row's keys, or None when they fit none."""
    keys = set(keys)
    if {"query", "pos"} <= keys:
        return "flagembedding", {}
    if {"sentence1", "sentence2"} <= keys:
        if "score" in keys:
            return "sts", {"text1": "sentence1", "text2": "sentence2", "score": "score"}
        return "pair", {"query": "sentence1", "passage": "sentence2"}
    query = next((k for k in ("anchor", "query") if k in keys), None)
    passage = next((k for k in ("positive", "passage") if k in keys), None)
    if query is None or passage is None:
        return None
    negatives = (["negative"] if "negative" in keys else []) + sorted(
        (k for k in keys if re.fullmatch(r"negative_\d+", k)), key=lambda k: int(k[9:]))
    return ("triplet" if negatives else "pair"), {"query": query, "passage": passage, "negatives": negatives}


def _first_layout(path: Path, container: str) -> tuple[str, dict, list[str]] | None:
    for i, (_, raw) in enumerate(raw_rows(path, container)):
        if i >= DETECT_ROWS:
            break
        try:
            row = parse(raw, container)
        except Rejected:
            continue
        if (found := detect_layout(row)) is not None:
            return (*found, sorted(row))
    return None


def open_source(path, input_format: str, kind: str, label: str) -> Source:
    """Check one input and decide its layout and output kind; an InputError naming the file if the format
    is unknown, can't be detected, or doesn't fit the file, or the kind doesn't fit the layout."""
    if input_format not in FORMATS:
        raise InputError(f"unknown format {input_format!r}; known: {', '.join(FORMATS)}", path=path, field="format")
    if kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}", path=path, field="kind")
    path = Path(path)
    container = container_of(path)
    if container == "tsv":
        if input_format not in ("auto", "pairs"):
            raise InputError(f"a .tsv file is the pairs format (query<TAB>passage), not --format {input_format}",
                             path=path, field="format")
        layout, columns = "pair", {"query": "query", "passage": "passage"}
    elif input_format == "flagembedding":
        layout, columns = "flagembedding", {}
    else:
        found = _first_layout(path, container)
        if found is None:
            raise InputError(
                f"cannot detect the format: none of the first {DETECT_ROWS} rows has the keys of FlagEmbedding (query, "
                "pos, neg), sentence-transformers (anchor, positive, negative_1, ...; sentence1, sentence2, score) "
                "or pairs (query, passage)", path=path, field="format")
        layout, columns, keys = found
        if input_format != "auto" and layout not in FORMAT_LAYOUTS[input_format]:
            raise InputError(f"--format {input_format}, but its rows have the keys {', '.join(keys)} (a {layout} "
                             f"layout: --format {next(f for f, ls in FORMAT_LAYOUTS.items() if layout in ls)})",
                             path=path, field="format")
    allowed = LAYOUT_KINDS[layout]
    chosen = allowed[0] if kind == "auto" else kind
    if chosen not in allowed:
        raise InputError(f"--kind {kind}: {layout} rows import as {' or '.join(allowed)}", path=path, field="kind")
    return Source(path, container, layout, chosen, label, columns)


# --- one row's fields, checked ---------------------------------------------------------------------------

def _text(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        raise Rejected("missing_field", f"'{key}' is missing", key)
    if not isinstance(value, str):
        raise Rejected("wrong_type", f"'{key}' must be a string, got {type(value).__name__}", key)
    if not value.strip():
        raise Rejected("empty_text", f"'{key}' is empty", key)
    return value


def _optional_text(row: dict, key: str) -> str | None:
    """A string kept as it is (an empty `prompt` too, so that it comes back out), or None when absent."""
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise Rejected("wrong_type", f"'{key}' must be a string, got {type(value).__name__}", key)
    return value


def _texts(row: dict, key: str, *, required: bool) -> list[str]:
    value = row.get(key)
    if value is None:
        if required:
            raise Rejected("missing_field", f"'{key}' is missing", key)
        return []
    if not isinstance(value, list):
        raise Rejected("wrong_type", f"'{key}' must be a list of strings, got {type(value).__name__}", key)
    if required and not value:
        raise Rejected("empty_list", f"'{key}' is an empty list", key)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise Rejected("wrong_type", f"'{key}'[{i}] must be a string, got {type(item).__name__}", key)
        if not item.strip():
            raise Rejected("empty_text", f"'{key}'[{i}] is empty", key)
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _score(row: dict, key: str) -> float:
    value = row.get(key)
    if value is None:
        raise Rejected("missing_field", f"'{key}' is missing", key)
    if not _is_number(value):
        raise Rejected("bad_score", f"'{key}' must be a finite number, got {value!r:.40}", key)
    return value


def _scores(row: dict, key: str, count: int, texts_key: str) -> list | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(_is_number(v) for v in value):
        raise Rejected("bad_score", f"'{key}' must be a list of finite numbers, got {value!r:.60}", key)
    if len(value) != count:
        raise Rejected("bad_score", f"'{key}' has {len(value)} scores for {count} '{texts_key}' texts", key)
    return value


# --- rows -> records ---------------------------------------------------------------------------------------

def is_classification(type_: str | None) -> bool:
    """FlagEmbedding's `type` marks classification data when it names it (`symmetric_class`, `classification`)."""
    return type_ is not None and "class" in type_.lower()


def _retrieval(row_id: str, query: str, positives: list[str], negatives: list[str], extras: dict,
               classification: bool = False) -> tuple[list, list]:
    """A retrieval record (its passages, by id, for the corpus), or a classification-as-retrieval one (texts)."""
    if classification:
        return [("classification", {"id": row_id, "query": query, "positives": positives, "negatives": negatives,
                                    **extras})], []
    passages = [(passage_id(t), t) for t in positives + negatives]
    record = {"id": row_id, "query": query, "positives": positives,
              "positive_ids": [pid for pid, _ in passages[:len(positives)]],
              "candidates": [pid for pid, _ in passages[len(positives):]], **extras}
    return [("retrieval", record)], passages


def _pair(row_id: str, query: str, passage: str, source: Source, extras: dict) -> tuple[str, dict]:
    return "weak_pairs", {"id": row_id, "query": query, "passage": passage, "source": source.path.name, **extras}


def convert(source: Source, row: dict, number: int) -> tuple[list[tuple[str, dict]], list[tuple[str, str]]]:
    """One parsed row -> ([(output name, record)], [(passage id, text)] for the corpus), or Rejected."""
    row_id, cols = f"{source.label}-{number}", source.columns
    if source.layout == "flagembedding":
        return _flagembedding(row, row_id, source)
    if source.layout == "sts":
        text1, text2, score = _text(row, cols["text1"]), _text(row, cols["text2"]), _score(row, cols["score"])
        if source.kind == "pairs":
            return [_pair(row_id, text1, text2, source, {"score": score})], []
        return [("sts", {"text1": text1, "text2": text2, "score": score})], []
    query, passage = _text(row, cols["query"]), _text(row, cols["passage"])
    if source.kind == "pairs":
        return [_pair(row_id, query, passage, source, {})], []
    return _retrieval(row_id, query, [passage], [_text(row, key) for key in cols.get("negatives", ())], {})


def _flagembedding(row: dict, row_id: str, source: Source):
    query = _text(row, "query")
    pos, neg = _texts(row, "pos", required=True), _texts(row, "neg", required=False)
    pos_scores, neg_scores = _scores(row, "pos_scores", len(pos), "pos"), _scores(row, "neg_scores", len(neg), "neg")
    prompt, type_ = _optional_text(row, "prompt"), _optional_text(row, "type")
    if source.kind == "pairs":
        return [_pair(row_id if len(pos) == 1 else f"{row_id}.{i}", query, p, source,
                      {k: v for k, v in (("score", pos_scores[i] if pos_scores else None), ("prompt", prompt))
                       if v is not None}) for i, p in enumerate(pos)], []
    classification = is_classification(type_)
    if classification and not neg:
        raise Rejected("empty_list", f"a classification row (type {type_!r}) needs texts of other classes in 'neg'",
                       "neg")
    extras = {k: v for k, v in (("positive_scores", pos_scores), ("negative_scores", neg_scores), ("prompt", prompt),
                                ("type", type_)) if v is not None}
    return _retrieval(row_id, query, pos, neg, extras, classification)


def flagembedding_row(row: dict, corpus: dict[str, str] | None) -> dict:
    """One of our retrieval records back as a FlagEmbedding row: `neg` from its candidates' texts (or its
    `negatives`), and the scores, prompt and type it carries."""
    out = {"query": row["query"], "pos": list(row["positives"])}
    if row.get("candidates") is not None:
        out["neg"] = [corpus[str(c)] for c in row["candidates"]]
    else:
        out["neg"] = list(row.get("negatives") or [])
    for ours, theirs in (("positive_scores", "pos_scores"), ("negative_scores", "neg_scores"), ("prompt", "prompt"),
                         ("type", "type")):
        if row.get(ours) is not None:
            out[theirs] = row[ours]
    if len(out.get("neg_scores", out["neg"])) != len(out["neg"]):
        del out["neg_scores"]  # candidates mined after the import: the scores belong to other texts
    return out

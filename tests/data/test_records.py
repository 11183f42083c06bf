import pytest

from conan_embed.data.records import read_records, validate_record, write_records
from conan_embed.errors import InputError


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip(tmp_path, suffix):
    rows = [{"query": "保险", "passage": "人寿保险", "score": 0.5}, {"query": "汽车", "passage": "车险"}]
    path = tmp_path / f"pairs{suffix}"
    assert write_records(path, rows, "weak_pair") == 2
    back = list(read_records(path, "weak_pair"))
    assert [r["query"] for r in back] == ["保险", "汽车"]


def test_missing_field_names_file_row_and_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"query": "a", "passage": "b"}\n{"query": "c"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"pairs\.jsonl, row 2: missing field 'passage'"):
        list(read_records(path, "weak_pair"))


@pytest.mark.parametrize("line, message", [
    (b'{"query": "", "passage": "b"}', "field 'query' must be a non-empty string"),
    (b'{"query": "a", "passage": "b", "score": "high"}', "field 'score' must be a finite number"),
    (b'{"query": "a", "passage": ', "invalid JSON"),
    (b'["a", "b"]', "expected a JSON object"),
    (b'{"query": "\xff\xfe", "passage": "b"}', "not UTF-8"),
])
def test_bad_rows(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"query": "ok", "passage": "ok"}\n' + line + b"\n")
    with pytest.raises(InputError, match=rf"bad\.jsonl, row 2: .*{message}"):
        list(read_records(path, "weak_pair"))


def test_retrieval_needs_negatives_or_candidates():
    with pytest.raises(InputError, match="'negatives'.*or 'candidates'"):
        validate_record({"id": 1, "query": "q", "positives": ["p"]}, "retrieval")
    validate_record({"id": 1, "query": "q", "positives": ["p"], "candidates": []}, "retrieval")


def test_unknown_kind_and_file_type(tmp_path):
    with pytest.raises(InputError, match="unknown record kind"):
        validate_record({}, "triplet")
    with pytest.raises(InputError, match="unsupported file type"):
        write_records(tmp_path / "x.csv", [], None)
    with pytest.raises(InputError, match="file not found"):
        list(read_records(tmp_path / "none.jsonl"))


def test_failed_write_leaves_no_partial_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    with pytest.raises(InputError, match="row 2"):
        write_records(path, [{"query": "a", "passage": "b"}, {"query": "a"}], "weak_pair")
    assert list(tmp_path.iterdir()) == []

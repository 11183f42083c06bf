"""`conan-embed import` (conan_embed.data.importers): FlagEmbedding, sentence-transformers and pair files into the
training files, rejected rows named, resume, and the way back to FlagEmbedding JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conan_embed.cli import main
from conan_embed.data import importers
from conan_embed.data.import_formats import passage_id
from conan_embed.data.importers import export_flagembedding, import_data
from conan_embed.data.records import read_records
from conan_embed.errors import InputError

FIXTURES = Path(__file__).parent / "fixtures"
FLAG = FIXTURES / "flagembedding.jsonl"
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "imported-tiny.yaml"


def plain_rows(path: Path) -> list[dict]:
    """A JSONL file read with nothing but json (not the importer's parser)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def canonical(rows: list[dict]) -> list[str]:
    return sorted(json.dumps(r, ensure_ascii=False, sort_keys=True) for r in rows)


def run_import(inputs, out, **kwargs) -> dict:
    return import_data([str(p) for p in inputs], out, progress=False, **kwargs)


def test_flagembedding_round_trips_every_query_positive_and_negative(tmp_path):
    summary = run_import([FLAG], tmp_path / "data")
    given = plain_rows(FLAG)
    assert summary["rows_in"] == len(given) == summary["rows_written"] and summary["rows_rejected"] == 0
    classification = [r for r in given if "class" in r.get("type", "")]
    assert summary["files"]["finetune/retrieval.jsonl"] == len(given) - len(classification) == 6
    assert summary["files"]["finetune/classification.jsonl"] == len(classification) == 2

    # retrieval rows: the negatives are the first candidates, in order, and point at their texts
    corpus = {r["id"]: r["text"] for r in plain_rows(tmp_path / "data/finetune/corpus.jsonl")}
    retrieval = plain_rows(tmp_path / "data/finetune/retrieval.jsonl")
    for ours, theirs in zip(retrieval, [r for r in given if r not in classification]):
        assert ours["query"] == theirs["query"] and ours["positives"] == theirs["pos"]
        assert [corpus[c] for c in ours["candidates"]] == theirs["neg"]
        assert [corpus[p] for p in ours["positive_ids"]] == theirs["pos"]
        assert ours.get("prompt") == theirs.get("prompt") and ours.get("negative_scores") == theirs.get("neg_scores")
    assert [r["negatives"] for r in plain_rows(tmp_path / "data/finetune/classification.jsonl")] == \
        [r["neg"] for r in classification]
    list(read_records(tmp_path / "data/finetune/retrieval.jsonl", "retrieval"))  # the training schema accepts them

    export_flagembedding(tmp_path / "data", tmp_path / "back.jsonl", progress=False)
    back = plain_rows(tmp_path / "back.jsonl")
    assert canonical(back) == canonical(given)  # every key: query, pos, neg, pos_scores, neg_scores, prompt, type
    several = next(r for r in back if len(r["pos"]) > 1)
    assert several["pos_scores"] == [0.9, 0.85]


def test_passages_shared_by_rows_share_one_corpus_id(tmp_path):
    run_import([FLAG], tmp_path / "data", chunk_rows=2)  # the shared passages are in different chunks
    given = [r for r in plain_rows(FLAG) if "class" not in r.get("type", "")]
    corpus = plain_rows(tmp_path / "data/finetune/corpus.jsonl")
    texts = [r["text"] for r in corpus]
    assert sorted(texts) == sorted({t for r in given for t in r["pos"] + r["neg"]})  # each text once
    assert all(r["id"] == passage_id(r["text"]) for r in corpus)
    rows = plain_rows(tmp_path / "data/finetune/retrieval.jsonl")
    shared = "人寿保险的现金价值随保单年度增加。"  # row 1's negative, row 2's positive, row 5's negative
    assert rows[0]["candidates"][0] == rows[1]["positive_ids"][0] == rows[4]["candidates"][1] == passage_id(shared)


def _save_formats(tmp_path: Path) -> dict[str, Path]:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = plain_rows(FIXTURES / "st_triplets.jsonl")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "triplets.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "triplets-hf"))
    return {"jsonl": FIXTURES / "st_triplets.jsonl", "parquet": tmp_path / "triplets.parquet",
            "hf": tmp_path / "triplets-hf"}


@pytest.mark.parametrize("container", ["jsonl", "parquet", "hf"])
def test_sentence_transformers_triplets_become_retrieval_rows(tmp_path, container):
    source = _save_formats(tmp_path)[container]
    summary = run_import([source], tmp_path / "out")
    assert summary["inputs"][0]["layout"] == "triplet" and summary["rows_written"] == 3
    corpus = {r["id"]: r["text"] for r in plain_rows(tmp_path / "out/finetune/corpus.jsonl")}
    rows = plain_rows(tmp_path / "out/finetune/retrieval.jsonl")
    given = plain_rows(FIXTURES / "st_triplets.jsonl")
    assert [r["query"] for r in rows] == [g["anchor"] for g in given]
    assert [r["positives"] for r in rows] == [[g["positive"]] for g in given]
    assert [[corpus[c] for c in r["candidates"]] for r in rows] == [[g["negative_1"], g["negative_2"]] for g in given]


def test_sts_pairs_and_tsv_layouts(tmp_path):
    summary = run_import([FIXTURES / "st_sts.jsonl", FIXTURES / "pairs.tsv", FIXTURES / "pairs.jsonl"], tmp_path / "o")
    assert [(i["layout"], i["kind"], i["rows"]) for i in summary["inputs"]] == [
        ("sts", "sts", 3), ("pair", "pairs", 2), ("pair", "pairs", 2)]  # the .tsv header is not a row
    assert plain_rows(tmp_path / "o/finetune/sts.jsonl") == [
        {"text1": r["sentence1"], "text2": r["sentence2"], "score": r["score"]}
        for r in plain_rows(FIXTURES / "st_sts.jsonl")]
    pairs = plain_rows(tmp_path / "o/pretrain/weak_pairs.jsonl")
    assert [(p["query"], p["passage"], p["source"]) for p in pairs][:2] == [
        ("汽车保险怎么理赔？", "发生事故后先报案，再提交理赔材料。", "pairs.tsv"),
        ("退休后年金怎么领取？", "年金保险在退休后按月支付。", "pairs.tsv")]
    assert len({p["id"] for p in pairs}) == 4  # pairs.tsv and pairs.jsonl share a name, not ids
    assert set(summary["files"]) == {"finetune/sts.jsonl", "pretrain/weak_pairs.jsonl"}
    list(read_records(tmp_path / "o/pretrain/weak_pairs.jsonl", "weak_pair"))


def test_kind_option_and_single_negative_column(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"anchor": "问", "positive": "答", "negative": "错"},
                                                 ensure_ascii=False) + "\n", encoding="utf-8")
    run_import([tmp_path / "t.jsonl"], tmp_path / "a")
    assert plain_rows(tmp_path / "a/finetune/retrieval.jsonl")[0]["candidates"] == [passage_id("错")]
    # FlagEmbedding rows as weak pairs: one per positive, with its score and the prompt
    run_import([FLAG], tmp_path / "b", kind="pairs")
    pairs = plain_rows(tmp_path / "b/pretrain/weak_pairs.jsonl")
    assert len(pairs) == sum(len(r["pos"]) for r in plain_rows(FLAG))
    assert pairs[1]["id"] == "flagembedding-2.0" and pairs[1]["score"] == 0.9 and pairs[1]["prompt"].startswith("为")
    # query-passage pairs as retrieval rows with no candidates yet (`conan-embed mine` ranks some)
    run_import([FIXTURES / "pairs.jsonl"], tmp_path / "c", kind="retrieval")
    assert plain_rows(tmp_path / "c/finetune/retrieval.jsonl")[0]["candidates"] == []
    with pytest.raises(InputError, match=r"flagembedding\.jsonl.*--kind sts: flagembedding rows import as retrieval"):
        run_import([FLAG], tmp_path / "d", kind="sts")


def test_byte_order_mark_crlf_and_an_empty_prompt(tmp_path):
    row = {"query": "问", "pos": ["答"], "neg": ["错"], "prompt": ""}
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(row, ensure_ascii=False).encode() + b"\r\n")
    (tmp_path / "bom.tsv").write_bytes(b"\xef\xbb\xbfquery\tpassage\r\n\xe9\x97\xae\t\xe7\xad\x94\r\n")
    summary = run_import([tmp_path / "bom.jsonl", tmp_path / "bom.tsv"], tmp_path / "o")
    assert summary["rows_rejected"] == 0 and summary["files"]["pretrain/weak_pairs.jsonl"] == 1
    assert [(p["query"], p["passage"]) for p in plain_rows(tmp_path / "o/pretrain/weak_pairs.jsonl")] == [("问", "答")]
    export_flagembedding(tmp_path / "o", tmp_path / "back.jsonl", progress=False)
    assert plain_rows(tmp_path / "back.jsonl") == [row]


BAD_ROWS = [  # (line, reason or None for a good row)
    (b'{"query": "\xe6\xb1\xbd\xe8\xbd\xa6", "pos": ["p1"], "neg": ["n1"]}', None),
    (b'{"query": "", "pos": ["p"], "neg": ["n"]}', "empty_text"),
    (b'{"pos": ["p"], "neg": ["n"]}', "missing_field"),
    (b'{"query": "q", "pos": [], "neg": ["n"]}', "empty_list"),
    (b'{"query": "q", "pos": "p", "neg": ["n"]}', "wrong_type"),
    (b'{"query": "q", "pos": ["p"], "neg": ["n", 3]}', "wrong_type"),
    (b'{"query": "q\xff", "pos": ["p"], "neg": ["n"]}', "not_utf8"),
    (b'{"query": "q", "pos": [', "invalid_json"),
    (b'{"query": "q", "pos": ["p"], "neg": ["n"], "neg_scores": ["high"]}', "bad_score"),
    (b'{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [0.5, 0.2]}', "bad_score"),
    (b'["q", "p"]', "not_an_object"),
    (b'', None),  # a blank line is no row
    (b'{"query": "q2", "pos": ["p2"], "neg": ["n1"], "pos_scores": [1]}', None),
]


def test_bad_rows_are_rejected_by_file_row_and_reason(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(line for line, _ in BAD_ROWS) + b"\n")
    summary = run_import([bad], tmp_path / "out", chunk_rows=4)
    rejected = plain_rows(tmp_path / "out/rejected.jsonl")
    expected = [(str(bad), number, reason) for number, (_, reason) in enumerate(BAD_ROWS, 1) if reason]
    assert [(r["file"], r["row"], r["reason"]) for r in rejected] == expected
    assert rejected[0]["field"] == "query" and "'query' is missing" in rejected[1]["detail"]
    assert "\\xff" in next(r["raw"] for r in rejected if r["reason"] == "not_utf8")
    rows_in = sum(1 for line, _ in BAD_ROWS if line)
    assert summary["rows_in"] == rows_in == summary["rows_written"] + summary["rows_rejected"]
    assert summary["rows_written"] == 2 == len(plain_rows(tmp_path / "out/finetune/retrieval.jsonl"))
    assert summary["rejected"] == {"bad_score": 2, "empty_list": 1, "empty_text": 1, "invalid_json": 1,
                                   "missing_field": 1, "not_an_object": 1, "not_utf8": 1, "wrong_type": 2}
    assert json.loads((tmp_path / "out/import.json").read_text())["inputs"][0] == {
        "path": str(bad), "bytes": bad.stat().st_size, "layout": "flagembedding", "kind": "retrieval",
        "rows": rows_in, "rejected": len(expected)}


def _output_files(folder: Path) -> dict[str, bytes]:
    files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    summary = json.loads(files.pop("import.json"))
    for key in ("seconds", "resumed_at_chunk"):
        summary.pop(key)
    return {**files, "import.json": json.dumps(summary).encode()}


def test_an_interrupted_import_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(line for line, _ in BAD_ROWS) + b"\n")
    inputs = [FLAG, bad, FIXTURES / "st_triplets.jsonl"]
    run_import(inputs, tmp_path / "whole", chunk_rows=3)

    stopped = run_import(inputs, tmp_path / "cut", chunk_rows=3, max_chunks=1)
    assert stopped["stopped_after_chunk"] == 1 and not (tmp_path / "cut/import.json").exists()
    # a crash in the middle of chunk 3, after one of its files was written
    real, calls = importers.write_records, []

    def crash_in_chunk_3(path, rows, kind=None):
        calls.append(path)
        if "chunk-000002" in str(path) and len([c for c in calls if "chunk-000002" in str(c)]) == 2:
            raise KeyboardInterrupt
        return real(path, rows, kind)

    monkeypatch.setattr(importers, "write_records", crash_in_chunk_3)
    with pytest.raises(KeyboardInterrupt):
        run_import(inputs, tmp_path / "cut", chunk_rows=3)
    assert (tmp_path / "cut/import-work/chunk-000002").is_dir()
    assert not (tmp_path / "cut/import-work/chunk-000002/done.json").exists()
    monkeypatch.setattr(importers, "write_records", real)
    summary = run_import(inputs, tmp_path / "cut", chunk_rows=3)
    assert summary["resumed_at_chunk"] == 2 and not (tmp_path / "cut/import-work").exists()
    assert _output_files(tmp_path / "cut") == _output_files(tmp_path / "whole")


def test_changed_options_are_refused_and_overwrite_starts_again(tmp_path):
    out = tmp_path / "out"
    run_import([FLAG], out, chunk_rows=3, max_chunks=1)
    with pytest.raises(InputError, match=r"options\.json, field 'chunk_rows': --chunk-rows was 3 .* now 4"):
        run_import([FLAG], out, chunk_rows=4)
    with pytest.raises(InputError, match=r"--kind was auto .* now pairs"):
        run_import([FLAG], out, chunk_rows=3, kind="pairs")
    with pytest.raises(InputError, match=r"the inputs changed"):
        run_import([FLAG, FIXTURES / "pairs.jsonl"], out, chunk_rows=3)
    summary = run_import([FLAG], out, chunk_rows=4, overwrite=True)
    assert summary["chunks"] == 2 and summary["resumed_at_chunk"] is None
    assert run_import([FLAG], out, chunk_rows=4) == summary  # finished: nothing to do
    with pytest.raises(InputError, match=r"import\.json.*--chunk-rows was 4"):
        run_import([FLAG], out, chunk_rows=5)
    (tmp_path / "other/finetune").mkdir(parents=True)
    (tmp_path / "other/finetune/retrieval.jsonl").write_text("{}\n")
    with pytest.raises(InputError, match=r"retrieval\.jsonl, field 'output': already exists.*--overwrite"):
        run_import([FLAG], tmp_path / "other")


def test_unknown_or_undetectable_formats_name_the_file(tmp_path, capsys):
    (tmp_path / "odd.jsonl").write_text('{"title": "a", "body": "b"}\n', encoding="utf-8")
    (tmp_path / "x.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"odd\.jsonl, field 'format': cannot detect the format.*keys of FlagEmbedding"):
        run_import([tmp_path / "odd.jsonl"], tmp_path / "o")
    with pytest.raises(InputError, match=r"flagembedding\.jsonl, field 'format': unknown format 'csv'"):
        run_import([FLAG], tmp_path / "o", input_format="csv")
    with pytest.raises(InputError, match=r"flagembedding\.jsonl.*--format pairs, but its rows have the keys neg, "
                                         r"neg_scores, pos.*--format flagembedding"):
        run_import([FLAG], tmp_path / "o", input_format="pairs")
    assert main(["import", str(tmp_path / "x.csv"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "conan-embed import: error:" in err and "x.csv, field 'format': unknown file type" in err
    assert not (tmp_path / "o").exists()


def test_finetune_on_imported_data_from_the_cli(tmp_path, capsys):
    """import -> finetune recipes/imported-tiny.yaml with a tiny random BERT -> export back, all from the CLI."""
    from conan_embed.testing import tiny_bert

    data = tmp_path / "data"
    assert main(["import", str(FLAG), "--output", str(data), "--chunk-rows", "3"]) == 0
    assert "8 rows in: 8 written (finetune/retrieval.jsonl 6, finetune/corpus.jsonl 12" in capsys.readouterr().out
    texts = [t for r in plain_rows(FLAG) for t in [r["query"], *r["pos"], *r["neg"]]]
    bert = tiny_bert(tmp_path / "bert", texts, hidden=32, layers=2, max_positions=128)
    assert main(["finetune", str(RECIPE), "--set", f"model.base={bert}", "--set", f"data.dir={data}",
                 "--set", f"output_dir={tmp_path / 'run'}"]) == 0
    stage = json.loads((tmp_path / "run/finetune/stage.json").read_text())
    assert stage["steps"] == 3 and stage["tasks"]["retrieval"]["rows"] == 6
    assert (tmp_path / "run/finetune/model/modules.json").is_file()
    assert main(["import", str(data), "--to", "flagembedding", "--output", str(tmp_path / "fe.jsonl")]) == 0
    assert canonical(plain_rows(tmp_path / "fe.jsonl")) == canonical(plain_rows(FLAG))

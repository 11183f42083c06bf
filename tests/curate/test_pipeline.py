"""The whole pipeline through files: formats, bad rows, counts that add up, resume, config errors, CLI."""

from __future__ import annotations

import gzip
import json

import pytest

from conan_embed.cli import main
from conan_embed.curate import curate, curate_config_from_dict
from conan_embed.errors import InputError

from .conftest import read_rows, write_jsonl

NO_TEACHER = {"stages": {"teacher": {"enabled": False}}, "executor": {"workers": 1}}


def config(extra: dict | None = None, **top):
    data = json.loads(json.dumps(NO_TEACHER))
    for key, value in (extra or {}).items():
        data["stages"].setdefault(key, {}).update(value)
    data.update(top)
    return curate_config_from_dict(data)


def all_rejected(out) -> list[dict]:
    return read_rows(out / "rejected")


def check_accounting(stats, out, fmt="jsonl"):
    """in = kept + dropped at every stage and overall, and the files hold exactly those rows."""
    n = stats["rows_in"]
    for row in stats["table"]:
        assert row["in"] == n and row["kept"] == n - row["dropped"] == n - sum(row["reasons"].values())
        n = row["kept"]
    assert n == stats["kept"]
    if fmt == "jsonl":
        kept, rejected = read_rows(out / "kept"), all_rejected(out)
    else:
        import pyarrow.parquet as pq
        kept = [r for p in sorted((out / "kept").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
        rejected = [r for p in sorted((out / "rejected").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(kept) == stats["kept"] and len(kept) + len(rejected) == stats["rows_in"]
    return kept, rejected


def test_bad_rows_are_rejected_with_reasons_and_nothing_is_lost(tmp_path, shipped_pairs):
    good = shipped_pairs[:30]
    lines = [*good[:10], "{not json", {"query": "缺少段落"}, {"query": "问题", "passage": 42}, [1, 2],
             {"query": "问题", "passage": "答案在这里，很长的一段话。", "reason": "mine"}, "", *good[10:]]
    path = tmp_path / "raw.jsonl"
    write_jsonl(path, lines)
    with open(path, "ab") as f:
        f.write(b'{"query": "\xff\xfe", "passage": "x"}\n')
    out = tmp_path / "out"
    stats = curate([path], out, config())
    kept, rejected = check_accounting(stats, out)
    assert stats["rows_in"] == 36  # the blank line is not a row
    by_reason = {r["reason"]: r for r in rejected}
    assert {"read:invalid_json", "read:missing_field", "read:not_an_object", "read:reserved_field",
            "read:not_utf8"} <= set(by_reason)
    assert by_reason["read:invalid_json"]["origin"] == f"{path}:11" and by_reason["read:invalid_json"]["raw"] == "{not json"
    assert "passage field 'passage' is missing" in [r["detail"] for r in rejected if r["reason"] == "read:missing_field"][0]
    assert by_reason["read:not_utf8"]["origin"] == f"{path}:37"
    # every kept row keeps all its input fields, ids included
    assert {r["id"] for r in kept} <= {p["id"] for p in good} and all(set(r) >= {"id", "source"} for r in kept)


def test_empty_and_missing_inputs_fail_before_any_output(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(InputError, match="empty.jsonl: empty input file"):
        curate([tmp_path / "empty.jsonl"], tmp_path / "out", config())
    with pytest.raises(InputError, match="nope.jsonl: input file not found"):
        curate([tmp_path / "nope.jsonl"], tmp_path / "out", config())
    (tmp_path / "x.txt").write_text("a\n")
    with pytest.raises(InputError, match="unsupported file type"):
        curate([tmp_path / "x.txt"], tmp_path / "out", config())
    assert not (tmp_path / "out").exists()


def test_formats_and_field_mapping(tmp_path, shipped_pairs):
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"q": p["query"], "a": p["passage"], "rid": p["id"]} for p in shipped_pairs[:40]]
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:10])
    pq.write_table(pa.Table.from_pylist(rows[10:20]), tmp_path / "b.parquet")
    with open(tmp_path / "c.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["q", "a", "rid"])
        w.writeheader()
        w.writerows(rows[20:30])
    with open(tmp_path / "c.csv", "ab") as f:
        f.write("坏的,".encode() + b"\xff\xfe bytes,r-bad\n")
    write_jsonl(tmp_path / "d.jsonl", rows[30:])
    inputs = [tmp_path / n for n in ("a.jsonl.gz", "b.parquet", "c.csv", "d.jsonl")]
    out = tmp_path / "out"
    cfg = config(fields={"query": "q", "passage": "a"}, output_format="parquet", shard_rows=4)
    stats = curate(inputs, out, cfg)
    kept, rejected = check_accounting(stats, out, fmt="parquet")
    assert stats["rows_in"] == 41
    assert [r for r in rejected if r["reason"] == "read:not_utf8"][0]["origin"] == f"{tmp_path / 'c.csv'}:12"
    kept_ids = {r["rid"] for r in kept}
    assert kept_ids and kept_ids <= {r["rid"] for r in rows}
    assert len(list((out / "kept").glob("part-*.parquet"))) == 12  # 3 + 3 + 3 + 3 shards of <= 4 rows


def test_shipped_pairs_with_planted_duplicates(tmp_path, shipped_pairs):
    """The acceptance shape on a slice: planted near-duplicates end in dedup:near, counts add up."""
    import random

    from .test_dedup import plant

    rng = random.Random(1)
    rows = [dict(p) for p in shipped_pairs]
    sources = [p for p in shipped_pairs if len(p["passage"]) >= 150][:40]
    copies = [{**p, "id": f"plant{i}", "passage": plant(p["passage"], 0.9, rng)} for i, p in enumerate(sources)]
    write_jsonl(tmp_path / "raw.jsonl", rows + copies)
    out = tmp_path / "out"
    stats = curate([tmp_path / "raw.jsonl"], out, config(shard_rows=100))
    kept, rejected = check_accounting(stats, out)
    from conan_embed.curate.minhash import jaccard

    reasons = {r["id"]: r for r in rejected}
    for c, src in zip(copies, sources):
        j = jaccard(src["query"] + "\n" + src["passage"], c["query"] + "\n" + c["passage"])
        if j >= 0.8 and src["id"] not in reasons:
            assert reasons[c["id"]]["reason"] == "dedup:near" and reasons[c["id"]]["duplicate_of"] == src["id"]
    assert [row["stage"] for row in stats["table"]] == ["read", "normalize", "language", "heuristics", "safety",
                                                         "quality", "dedup"]


class Exploding:
    """A quality plug-in that fails on one text, to simulate a crash in the middle of a run."""
    calls = 0
    armed = True

    def __init__(self, needle: str):
        self.needle = needle

    def predict(self, texts):
        Exploding.calls += 1
        if Exploding.armed and any(self.needle in t for t in texts):
            raise RuntimeError("simulated crash")
        return [0.0] * len(texts)


def test_resume_redoes_only_unfinished_shards(tmp_path, shipped_pairs, monkeypatch):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "exploding_plugin", types.SimpleNamespace(Exploding=Exploding))
    rows = shipped_pairs[:80]
    write_jsonl(tmp_path / "raw.jsonl", rows)
    needle = rows[50]["passage"][:12]  # in shard 3 of 4 (20 rows each)
    settings = dict(shard_rows=20)
    extra = {"quality": {"classifiers": [{"name": "exploding_plugin:Exploding", "options": {"needle": needle}}]},
             "sample": {"size": 30}}
    Exploding.armed, Exploding.calls = True, 0
    with pytest.raises(RuntimeError, match="simulated crash"):
        curate([tmp_path / "raw.jsonl"], tmp_path / "out", config(extra, **settings))
    assert Exploding.calls == 3  # shards 1, 2 finished, 3 crashed
    Exploding.armed, Exploding.calls = False, 0
    resumed = curate([tmp_path / "raw.jsonl"], tmp_path / "out", config(extra, **settings))
    assert Exploding.calls == 2  # only shards 3 and 4
    fresh = curate([tmp_path / "raw.jsonl"], tmp_path / "fresh", config(extra, **settings))
    assert resumed["table"] == fresh["table"]
    for sub in ("kept", "rejected"):
        names = sorted(p.name for p in (tmp_path / "fresh" / sub).iterdir())
        assert names == sorted(p.name for p in (tmp_path / "out" / sub).iterdir())
        for name in names:
            assert (tmp_path / "out" / sub / name).read_text() == (tmp_path / "fresh" / sub / name).read_text()
    # a finished run is not redone; changed settings are refused, naming them
    Exploding.calls = 0
    assert curate([tmp_path / "raw.jsonl"], tmp_path / "out", config(extra, **settings))["kept"] == resumed["kept"]
    assert Exploding.calls == 0
    with pytest.raises(InputError, match="stages.dedup.threshold"):
        curate([tmp_path / "raw.jsonl"], tmp_path / "out", config({**extra, "dedup": {"threshold": 0.8}}, **settings))
    again = curate([tmp_path / "raw.jsonl"], tmp_path / "out", config({**extra, "dedup": {"threshold": 0.8}},
                                                                       **settings), overwrite=True)
    assert again["rows_in"] == 80


def test_parallel_workers_give_the_same_files(tmp_path, shipped_pairs):
    write_jsonl(tmp_path / "raw.jsonl", shipped_pairs[:200] + shipped_pairs[:20])
    one = curate([tmp_path / "raw.jsonl"], tmp_path / "one", config(shard_rows=50))
    cfg = config(shard_rows=50)
    cfg.executor.workers = 2
    two = curate([tmp_path / "raw.jsonl"], tmp_path / "two", cfg)
    assert one["table"] == two["table"] and one["table"][-1]["reasons"]["exact"] == 20
    assert read_rows(tmp_path / "one" / "kept") == read_rows(tmp_path / "two" / "kept")


def test_sample_is_stratified_and_seeded(tmp_path, shipped_pairs):
    write_jsonl(tmp_path / "raw.jsonl", shipped_pairs)
    stats = curate([tmp_path / "raw.jsonl"], tmp_path / "out", config({"sample": {"size": 100, "by": "source"}},
                                                                      shard_rows=150))
    kept = read_rows(tmp_path / "out" / "kept")
    assert len(kept) == stats["kept"] == 100
    from collections import Counter

    have = Counter(p["source"] for p in shipped_pairs)
    got = Counter(r["source"] for r in kept)
    for source, n in have.items():
        assert abs(got[source] - 100 * n / len(shipped_pairs)) <= 4, (source, got, have)
    again = curate([tmp_path / "raw.jsonl"], tmp_path / "again", config({"sample": {"size": 100, "by": "source"}},
                                                                        shard_rows=150))
    assert read_rows(tmp_path / "again" / "kept") == kept and again["table"] == stats["table"]


def test_sample_with_equal_shares_lifts_the_small_sources(tmp_path, shipped_pairs):
    from collections import Counter

    write_jsonl(tmp_path / "raw.jsonl", shipped_pairs)
    have = Counter(p["source"] for p in shipped_pairs)
    size = 4 * min(have.values())  # more than the smallest source has for its equal share
    curate([tmp_path / "raw.jsonl"], tmp_path / "out", config({"sample": {"size": size, "shares": "equal"}}))
    got = Counter(r["source"] for r in read_rows(tmp_path / "out" / "kept"))
    assert sum(got.values()) == size and len(have) >= 2
    smallest = min(have, key=have.get)
    assert have[smallest] - 2 <= got[smallest] <= have[smallest]  # all of it (near-duplicates go first)
    others = [got[s] for s in have if s != smallest]
    assert max(others) - min(others) <= 1


def test_teacher_scores_every_kept_row(tmp_path, shipped_pairs, tiny_teacher):
    write_jsonl(tmp_path / "raw.jsonl", shipped_pairs[:100])
    cfg = curate_config_from_dict({"executor": {"workers": 1}, "stages": {"teacher": {
        "model": tiny_teacher, "percentile": 20, "max_length": {"query": 16, "passage": 32}}}})
    stats = curate([tmp_path / "raw.jsonl"], tmp_path / "out", cfg)
    kept, rejected = check_accounting(stats, tmp_path / "out")
    teacher_rows = [r for r in rejected if r["reason"] == "teacher:below_cut"]
    scored = stats["teacher"]["scored"]
    assert len(teacher_rows) == scored // 5 and all(r["score"] < stats["teacher"]["cut"] for r in teacher_rows)
    assert all(r["score"] >= stats["teacher"]["cut"] for r in kept)
    assert sum(stats["teacher"]["histogram"]["counts"]) == scored


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(InputError, match="stages.dedup.treshold"):
        curate_config_from_dict({"stages": {"dedup": {"treshold": 0.7}}})
    with pytest.raises(InputError, match="stages.dedup.num_perm: expected an integer"):
        curate_config_from_dict({"stages": {"dedup": {"num_perm": "many"}}})
    with pytest.raises(InputError, match="stages.dedup.bands.*<= num_perm"):
        curate_config_from_dict({"stages": {"dedup": {"bands": 20, "rows": 20}}})
    with pytest.raises(InputError, match="fields"):
        curate_config_from_dict({"fields": {"query": "q"}})


def test_cli_curate_prints_the_retention_table(tmp_path, shipped_pairs, capsys):
    write_jsonl(tmp_path / "raw.jsonl", shipped_pairs[:60])
    (tmp_path / "cfg.yaml").write_text("stages:\n  teacher: {enabled: false}\nexecutor: {workers: 1}\n")
    out = tmp_path / "out"
    assert main(["curate", str(tmp_path / "raw.jsonl"), "--output", str(out), "--config",
                 str(tmp_path / "cfg.yaml"), "--set", "stages.dedup.key=passage"]) == 0
    printed = capsys.readouterr().out
    assert "| dedup |" in printed and "| **total** | **60** |" in printed and (out / "stats.json").is_file()
    assert main(["curate", str(tmp_path / "raw.jsonl"), "--output", str(out), "--config",
                 str(tmp_path / "cfg.yaml")]) == 2
    assert "stages.dedup.key" in capsys.readouterr().err
    assert main(["curate", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o2")]) == 2
    assert "missing.jsonl: input file not found" in capsys.readouterr().err


def test_teacher_backend_is_hashed_only_when_not_the_default():
    """A curation written before the teacher had a backend ran torch: the default keeps its hash."""
    from conan_embed.curate.pipeline import _settings

    default = _settings(config({}))
    assert "backend" not in default["stages"]["teacher"] and "onnx_file" not in default["stages"]["teacher"]
    onnx = _settings(config({"teacher": {"backend": "onnx"}}))
    assert onnx["stages"]["teacher"]["backend"] == "onnx"

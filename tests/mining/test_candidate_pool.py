"""The candidate pool beside `mine`'s output: training loads it with numpy and gets exactly the matrix the
rows' `candidates` lists give; a pool that does not belong to the file (or corpus) beside it is ignored,
with a warning naming it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conan_embed.data.records import read_corpus, read_records, write_records
from conan_embed.mining import MineConfig, mine
from conan_embed.training.training_tasks import candidate_pool_paths, load_tasks


@pytest.fixture(scope="module")
def mined(st_model, train_data, tmp_path_factory):
    """A data folder whose retrieval file `mine` wrote (with its pool), over the tiny corpus."""
    folder = tmp_path_factory.mktemp("pool-data")
    write_records(folder / "corpus.jsonl", read_records(train_data / "finetune/corpus.jsonl"))
    rows = [{k: v for k, v in r.items() if k != "candidates"}
            for r in read_records(train_data / "finetune/retrieval.jsonl")]
    write_records(folder / "queries.jsonl", rows)
    mine(str(st_model), folder / "queries.jsonl", folder / "corpus.jsonl", folder / "mined.jsonl",
         MineConfig(top_k=15, cache_dir=str(folder / "cache")), show_progress=False)
    return folder


def task_of(recipe_dict, folder, **task):
    from conan_embed.recipe.schema import recipe_from_dict

    config = recipe_dict["stages"]["finetune"]["tasks"]["retrieval"]
    config.update(file="mined.jsonl", corpus="corpus.jsonl", **task)
    recipe_dict["stages"]["finetune"]["tasks"] = {"retrieval": config}
    return load_tasks(recipe_from_dict(recipe_dict).stages["finetune"].tasks, folder)["retrieval"]


def from_lists(folder, recipe_dict, tmp_path, **task):
    """The task loaded from the rows' lists alone: the same files without the pool, in another folder."""
    plain = tmp_path / "plain"
    plain.mkdir(exist_ok=True)
    for name in ("mined.jsonl", "corpus.jsonl"):
        (plain / name).write_bytes((folder / name).read_bytes())
    assert not any(p.exists() for p in candidate_pool_paths(plain / "mined.jsonl"))
    return task_of(recipe_dict, plain, **task)


def same_task(a, b) -> None:
    assert a.candidates.dtype == b.candidates.dtype == np.int32
    np.testing.assert_array_equal(a.candidates, b.candidates)
    np.testing.assert_array_equal(a.candidate_counts, b.candidate_counts)
    np.testing.assert_array_equal(a.row_numbers, b.row_numbers)
    assert a.rows == b.rows and a.corpus_ids == b.corpus_ids


@pytest.mark.parametrize("max_rows", [None, 20])
def test_pool_gives_the_matrix_of_the_lists(mined, recipe_dict, tmp_path, capsys, max_rows):
    pooled = task_of(recipe_dict, mined, max_rows=max_rows)
    listed = from_lists(mined, recipe_dict, tmp_path, max_rows=max_rows)
    same_task(pooled, listed)
    assert "candidate pool" not in capsys.readouterr().err  # used, no warning
    # and both are the rows' ids, looked up by hand
    ids, _ = read_corpus(mined / "corpus.jsonl")
    rows = list(read_records(mined / "mined.jsonl"))
    for r, number in enumerate(pooled.row_numbers):
        assert [ids[j] for j in pooled.candidates[r, :pooled.candidate_counts[r]]] == rows[number - 1]["candidates"]
    assert "candidates" not in pooled.rows[0] and pooled.candidates.shape[1] == 15


def test_pool_is_used_without_reading_the_lists(mined, recipe_dict, monkeypatch):
    """With a pool, no row's list is looked up: the rows reach the task without `candidates`."""
    from conan_embed.training.training_tasks import TrainingTask

    monkeypatch.setattr(TrainingTask, "_index_candidates", lambda *a: pytest.fail("the lists were read"))
    assert task_of(recipe_dict, mined).has_candidates


def spoil_file(folder):
    rows = list(read_records(folder / "mined.jsonl"))
    rows[3]["candidates"] = rows[3]["candidates"][1:]  # a hand edit: the pool no longer says what the file says
    write_records(folder / "mined.jsonl", rows)


def spoil_matrix(folder):
    path = candidate_pool_paths(folder / "mined.jsonl")[0]
    matrix = np.load(path)
    matrix[0, [0, 1]] = matrix[0, [1, 0]]
    np.save(path, matrix)


def spoil_corpus(folder):
    corpus = list(read_records(folder / "corpus.jsonl"))
    write_records(folder / "corpus.jsonl", corpus[1:] + corpus[:1])  # the same passages in another order


def spoil_description(folder):
    candidate_pool_paths(folder / "mined.jsonl")[1].write_text("{not json")


@pytest.mark.parametrize("spoil, said", [(spoil_file, "another version of mined.jsonl"),
                                         (spoil_matrix, "content differs from what was written"),
                                         (spoil_corpus, "another corpus"),
                                         (spoil_description, "cannot be read")])
def test_a_pool_that_does_not_belong_is_ignored_with_a_warning(mined, recipe_dict, tmp_path, capsys, spoil, said):
    folder = tmp_path / "spoilt"
    folder.mkdir()
    for file in mined.iterdir():
        if file.is_file():
            (folder / file.name).write_bytes(file.read_bytes())
    spoil(folder)
    task = task_of(recipe_dict, folder)
    err = capsys.readouterr().err
    assert f"ignoring the candidate pool {candidate_pool_paths(folder / 'mined.jsonl')[0]}" in err and said in err
    same_task(task, from_lists(folder, recipe_dict, tmp_path))


def test_pool_description(mined):
    from conan_embed.files import content_digest

    meta = json.loads(candidate_pool_paths(mined / "mined.jsonl")[1].read_text())
    assert meta["rows"] == 48 and meta["width"] == 15 and meta["corpus_size"] == 1123 and meta["candidates_last"]
    assert meta["file_sha256"] == content_digest(mined / "mined.jsonl")
    assert all(line.rstrip().endswith("]}") and ', "candidates": [' in line
               for line in (mined / "mined.jsonl").read_text().splitlines())

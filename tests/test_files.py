"""Atomic run files: a crash while writing leaves the previous file whole and no temporary behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conan_embed.files import write_json, write_text_atomic


def test_a_crash_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json(path, {"avg": 0.5})
    real = Path.write_text

    def half_then_crash(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"avg": 0.7, "tasks": list(range(100))})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"avg": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    write_text_atomic(tmp_path / "new" / "recipe.yaml", "name: x\n")  # creates the folder
    assert (tmp_path / "new" / "recipe.yaml").read_text() == "name: x\n"

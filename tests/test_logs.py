"""One log format on stderr, -v / -q on the CLI; results stay on stdout."""

from __future__ import annotations

import logging

import pytest

from conan_embed.logs import ROOT, get_logger, set_verbosity


@pytest.fixture(autouse=True)
def default_level():
    yield
    set_verbosity(0)


def test_messages_have_one_format_on_the_current_stderr(capsys):
    get_logger("run").info("stage pretrain: 60 steps")
    get_logger("curate").debug("not shown at the default level")
    captured = capsys.readouterr()
    assert captured.err == "[conan-embed run] stage pretrain: 60 steps\n" and captured.out == ""


def test_verbosity_chooses_what_shows(capsys):
    set_verbosity(-1)
    get_logger("eval").info("hidden")
    get_logger("eval").warning("kept")
    set_verbosity(1)
    get_logger("eval").debug("details")
    assert capsys.readouterr().err == "[conan-embed eval] kept\n[conan-embed eval] details\n"
    assert logging.getLogger(ROOT).propagate is False  # the application's root logger does not repeat them


def test_cli_quiet_keeps_the_result_and_drops_the_progress(tmp_path, capsys):
    from conan_embed.cli import main

    assert main(["build-data", "--output", str(tmp_path / "a")]) == 0
    loud = capsys.readouterr()
    assert "[conan-embed data]" in loud.err and "wrote" in loud.out
    assert main(["-q", "build-data", "--output", str(tmp_path / "b")]) == 0
    quiet = capsys.readouterr()
    assert "[conan-embed data]" not in quiet.err and "wrote" in quiet.out

"""One format for what conan-embed reports while it works: `[conan-embed <part>] message` on stderr.

Modules log through `get_logger("run")`, `get_logger("curate")`, ...; `conan-embed -v` / `-q` (or
`set_verbosity` in Python) choose how much. What a command prints as its result (a table, "wrote ...")
stays on stdout, and progress bars (tqdm) are not log messages. The package's logger has its own handler,
so messages show in a notebook or script without configuring logging; `logging.getLogger("conan_embed")`
is where to change that.
"""

from __future__ import annotations

import logging
import sys

ROOT = "conan_embed"
LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a message is emitted (pytest, notebooks and the launcher's
    worker processes replace it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _PartFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        part = record.name.partition(".")[2] or ROOT
        return f"[conan-embed {part}] {record.getMessage()}"


def _package_logger() -> logging.Logger:
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _CurrentStderr) for h in root.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(_PartFormatter())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False  # one copy of each message, not one more from the application's root logger
    return root


def get_logger(part: str) -> logging.Logger:
    """The logger of one part of the package: its messages read `[conan-embed <part>] ...`."""
    _package_logger()
    return logging.getLogger(f"{ROOT}.{part}")


def set_verbosity(verbosity: int) -> None:
    """-1: warnings only (-q), 0: progress messages (the default), 1: debug details too (-v)."""
    _package_logger().setLevel(LEVELS[max(-1, min(1, verbosity))])

"""Evaluation: the local, offline, C-MTEB-shaped suite (`run_suite`), built as mteb v2 custom tasks, and
the runner for the real C-MTEB datasets (`run_cmteb`).

Importing this package does not import mteb (that happens when a suite runs). It does point
mteb's result cache (`MTEB_CACHE`, which mteb creates at import time, by default ~/.cache/mteb)
into the temp directory unless the user set it: the suite writes its own results to `output_dir`
and never reads mteb's cache.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("MTEB_CACHE", str(Path(tempfile.gettempdir()) / "conan-embed-mteb-cache"))

from conan_embed.evaluation.cmteb import format_cmteb_table, run_cmteb  # noqa: E402
from conan_embed.evaluation.sizes import SIZES, SuiteSize, get_size  # noqa: E402
from conan_embed.evaluation.suite import (  # noqa: E402
    CATEGORIES,
    TASK_CATEGORY,
    format_table,
    resolve_tasks,
    run_suite,
    select_tasks,
)

__all__ = [
    "CATEGORIES", "SIZES", "TASK_CATEGORY", "SuiteSize", "format_cmteb_table", "format_table", "get_size",
    "resolve_tasks", "run_cmteb", "run_suite", "select_tasks",
]

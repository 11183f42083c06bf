"""What a checkpoint holds besides Hugging Face's files, and how a stage finds the one to resume.

A checkpoint folder `checkpoint-N/` is complete when `conan_checkpoint.json` (the marker) exists: the
trainer writes the model, optimizer, scheduler and RNG state (Hugging Face), then every training-state
object's files (`TrainingState`: e.g. the dynamic hard-negative miner's arrays), then the marker,
atomically and last. A run killed while saving leaves a folder without a marker, which resume skips.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, runtime_checkable

from conan_embed.files import write_json

CHECKPOINT_MARKER = "conan_checkpoint.json"


@runtime_checkable
class TrainingState(Protocol):
    """State that changes while training and must come back on resume (beyond weights, optimizer,
    scheduler, RNG and the data position, which Hugging Face restores). `save` writes its files into a
    checkpoint folder before the marker; `load` reads them back before the first resumed step."""

    state_name: str

    def save(self, folder: Path) -> None: ...

    def load(self, folder: Path) -> None: ...


@runtime_checkable
class NegativeSource(TrainingState, Protocol):
    """Where retrieval rows' hard negatives come from at step time: the seam dynamic mining plugs into
    (`conan_embed.mining.DynamicHardNegativeMiner` implements it; None: each row's static window).
    `ConanTrainer(negatives=...)` attaches it, registers it as a callback (so it sees every step's
    records) and saves it in every checkpoint as a `TrainingState`."""

    def attach(self, trainer) -> None:
        """Called once with the trainer, whose encoder the source may use to measure new negatives."""

    def lookup(self, task: str, rows):
        """[len(rows), n] corpus indices of the rows' negatives now (-1: the row's static ones), or None
        for a task the source does not manage."""


def save_checkpoint_extras(folder: str | Path, states, info: dict) -> None:
    """Every state object's files, then the marker (with `info`) last."""
    folder = Path(folder)
    for state in states:
        state.save(folder)
    write_json(folder / CHECKPOINT_MARKER, info)


def load_checkpoint_extras(folder: str | Path, states) -> None:
    from conan_embed.errors import InputError

    folder = Path(folder)
    for state in states:
        try:
            state.load(folder)
        except FileNotFoundError as exc:
            raise InputError(f"checkpoint has no saved {state.state_name} state ({exc.filename}); it was written "
                             f"by a run with other settings: pass --overwrite to start the stage again",
                             path=folder) from None


def read_marker(folder: str | Path) -> dict:
    return json.loads((Path(folder) / CHECKPOINT_MARKER).read_text())


def last_complete_checkpoint(folder: str | Path) -> Path | None:
    """The highest-numbered checkpoint-N in `folder` whose marker was written (HF writes checkpoints in
    place, so a run killed while saving leaves an incomplete one behind)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if (p / CHECKPOINT_MARKER).is_file() and p.name[11:].isdigit()]
    return max(done, key=lambda p: int(p.name[11:]), default=None)

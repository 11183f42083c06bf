"""What a checkpoint holds besides Hugging Face's files, and how a stage finds the one to resume.

A checkpoint folder `checkpoint-N/` is complete when `conan_checkpoint.json` (the marker) exists: the
trainer writes the model, optimizer, scheduler and RNG state (Hugging Face), then every training-state
object's files (`TrainingState`: e.g. the dynamic hard-negative miner's arrays), then the marker,
atomically and last. A run killed while saving leaves a folder without a marker, which resume skips.
"""

from __future__ import annotations

import json
from dataclasses import asdict
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


def _added_settings() -> dict:
    """Stage settings that later versions added, with the value a run written before them had: a saved
    fingerprint without such a key was trained that way, so resuming it is no change."""
    from conan_embed.training.config import MiningConfig

    # padding_free: the packed forward computes what the padded one did (up to float rounding)
    mining = MiningConfig()
    return {"max_rows": None, "in_batch": True, "mining": asdict(mining), "max_length": {},
            "mini_batch_size": None, "padding_free": True, "rule": mining.rule, "weight_drop": mining.weight_drop,
            "relative_margin": mining.relative_margin, "absolute_margin": mining.absolute_margin}


# recorded by later versions, unknown to a fingerprint written before them: nothing to compare it with
_UNRECORDED = {"data"}


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings (`old` is what a checkpoint saved)."""
    keys, added = [], _added_settings()
    for key in sorted(set(old) | set(new)):
        a, b, dotted = old.get(key), new.get(key), f"{prefix}{key}"
        if key not in old and (key in added and b == added[key] or not prefix and key in _UNRECORDED):
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_keys(a, b, dotted + ".")
        elif a != b:
            keys.append(dotted)
    return keys


def stage_fingerprint(stage, **extra) -> dict:
    """What must not change between an interrupted stage and its resumption."""
    return {"stage": asdict(stage), **extra}

"""Checkpoint fingerprints: a changed setting is named; a setting added since, at the value older runs
had, is no change (a run written before it existed resumes)."""

from __future__ import annotations

from dataclasses import asdict

from conan_embed.mining.mining_config import MiningConfig
from conan_embed.recipe.fingerprint import changed_keys


def test_settings_added_later_at_their_old_value_are_no_change():
    old = {"stage": {"max_steps": 10, "tasks": {"r": {"loss": {"temperature": 0.05}}}, "composer": "sequential"}}
    new = {"stage": {"max_steps": 10, "tasks": {"r": {"loss": {"temperature": 0.05, "in_batch": True}, "max_rows": None}},
                     "composer": "sequential", "mining": asdict(MiningConfig())}}
    assert changed_keys(old, new) == []
    new["stage"]["tasks"]["r"]["loss"]["in_batch"] = False
    new["stage"]["mining"]["mode"] = "dynamic"
    new["stage"]["max_steps"] = 12
    assert changed_keys(old, new) == ["stage.max_steps", "stage.mining", "stage.tasks.r.loss.in_batch"]

"""What a stage's resumption checks: the fingerprint of its settings and data, and which keys changed.

A stage's checkpoint records the fingerprint it trained under; `--resume` compares it with today's and
refuses, naming the keys, when they differ. Settings that later versions added count as unchanged when
today's value is what a run written before them did.
"""

from __future__ import annotations

from dataclasses import asdict

from conan_embed.mining.mining_config import MiningConfig


def _added_settings() -> dict:
    """Stage settings that later versions added, with the value a run written before them had: a saved
    fingerprint without such a key was trained that way, so resuming it is no change."""
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

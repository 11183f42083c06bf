"""Strict loading of nested dataclasses from YAML-shaped mappings, shared by recipes and curation configs.

An unknown key is a typo that would otherwise silently fall back to a default, and a wrong type should
fail before an hour of work rather than in the middle of it: both raise an InputError naming the dotted
key and the file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Literal

import yaml

from conan_embed.errors import InputError


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _form(tp) -> str:
    """How an annotation reads in an error message."""
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return _type_name(tp)


def _convert(value, tp, key: str, source):
    """`value` checked against the annotation `tp`; nested dataclasses are built recursively."""
    def fail(expected: str):
        raise InputError(f"{key}: expected {expected}, got {value!r:.80}", path=source, field=key)

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(value, options[0], key, source)
        errors = []
        for option in options:  # the first form the value fits, in the annotation's order
            try:
                return _convert(value, option, key, source)
            except InputError as exc:
                errors.append(exc)
        if isinstance(value, dict):  # a mapping was meant as the dataclass form: its own error is the useful one
            for option, exc in zip(options, errors):
                if dataclasses.is_dataclass(option):
                    raise exc
        fail(" or ".join(_form(o) for o in options))
    if origin is Literal:
        if value not in args:
            fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            fail(f"a mapping ({tp.__name__})")
        return build_dataclass(tp, value, key, source)
    if origin is list:
        if not isinstance(value, list):
            fail(f"a list of {_type_name(args[0])}")
        return [_convert(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            fail(f"a mapping of {_type_name(args[1])}")
        return {str(k): _convert(v, args[1], f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as a string: accept what float() reads
            try:
                return float(value)
            except ValueError:
                fail("a number")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            fail("a string")
        return value
    return value


def build_dataclass(cls, data: dict, prefix: str, source):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = [k for k in data if k not in known]
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise InputError(f"unknown key {where!r}; known keys here: {', '.join(sorted(known))}",
                         path=source, field=where)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                key = f"{prefix}.{f.name}" if prefix else f.name
                raise InputError(f"missing required key {key!r}", path=source, field=key)
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        kwargs[f.name] = _convert(data[f.name], hints[f.name], key, source)
    return cls(**kwargs)


def set_override(data: dict, assignment: str, source=None) -> None:
    """Apply one `dotted.key=value` override (value parsed as YAML) to a raw recipe mapping."""
    if "=" not in assignment:
        raise InputError(f"--set expects KEY=VALUE, got {assignment!r}", path=source)
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"--set {key}: {part!r} is not a mapping", path=source, field=key)
    node[parts[-1]] = yaml.safe_load(raw)

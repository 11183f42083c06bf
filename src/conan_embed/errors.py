"""Errors that the CLI turns into one clear line instead of a traceback."""

from __future__ import annotations


class ConanEmbedError(Exception):
    """Base class for every error conan-embed raises on purpose."""


class InputError(ConanEmbedError, ValueError):
    """Bad user input: names the file, row, key or field at fault.

    >>> str(InputError("missing field 'query'", path="pairs.jsonl", row=3))
    "pairs.jsonl, row 3: missing field 'query'"
    """

    def __init__(self, message: str, *, path: object = None, row: int | None = None,
                 field: str | None = None):
        self.path, self.row, self.field = path, row, field
        where = [str(path)] if path is not None else []
        if row is not None:
            where.append(f"row {row}")
        if field is not None and f"'{field}'" not in message:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class AssetError(ConanEmbedError):
    """A shipped asset (model file, tokenizer, data package) is missing or corrupt."""

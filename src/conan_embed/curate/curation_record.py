"""What flows between curation stages: an input row, its position, and why it was rejected (if it was)."""

from __future__ import annotations

from dataclasses import dataclass

# fields that curation adds to a rejected row; an input that already has one of them is refused up front
REJECT_FIELDS = ("reason", "detail", "duplicate_of", "origin")


@dataclass
class Record:
    row: dict  # the input row: every field kept, ids included
    gid: int  # global position over all inputs: the dedup order and the key for joins
    origin: str  # "file:row" (1-based) of the input
    reason: str | None = None  # "stage:rule" once rejected
    detail: str | None = None  # what the rule measured, e.g. "digit ratio 0.41 > 0.3"
    duplicate_of: str | None = None  # dedup: the kept row's id (or origin)

    @property
    def ref(self) -> str:
        """How a rejected row names another row: its `id` if it has one, else its origin."""
        rid = self.row.get("id")
        return str(rid) if rid is not None else self.origin

    def reject(self, reason: str, detail: str | None = None, duplicate_of: str | None = None) -> None:
        self.reason, self.detail, self.duplicate_of = reason, detail, duplicate_of

    def to_rejected_row(self) -> dict:
        row = {**self.row, "reason": self.reason, "detail": self.detail, "origin": self.origin}
        if self.duplicate_of is not None:
            row["duplicate_of"] = self.duplicate_of
        return row

    def to_work(self) -> dict:
        """Serialisation between phases (work files)."""
        return {"gid": self.gid, "origin": self.origin, "row": self.row}

    @classmethod
    def from_work(cls, data: dict) -> Record:
        return cls(row=data["row"], gid=data["gid"], origin=data["origin"])

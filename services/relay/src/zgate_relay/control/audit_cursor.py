"""Where audit shipping stands in the relay's audit log, and what to send next (sans-IO).

The cursor names the file (path and inode) and the byte offset up to which the control
plane has accepted every record. Only complete lines are sent: the writer may be halfway
through the last one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Batch", "ShipCursor", "parse_records", "resume_at", "split_batch"]

#: A batch holds at most this many records, and at most this many bytes (one larger
#: record goes alone).
MAX_RECORDS = 500
MAX_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class ShipCursor:
    """Everything before ``offset`` in the file ``path`` with inode ``inode`` is shipped."""

    path: str
    inode: int
    offset: int

    def as_dict(self) -> dict[str, object]:
        """The JSON form (audit-shipped.json)."""
        return {"path": self.path, "inode": self.inode, "offset": self.offset}

    @classmethod
    def from_dict(cls, value: object) -> ShipCursor:
        """From the JSON form; raises ValueError."""
        if not isinstance(value, Mapping):
            raise ValueError("not an object")
        path, inode, offset = value.get("path"), value.get("inode"), value.get("offset")
        if not isinstance(path, str) or not isinstance(inode, int) or not isinstance(offset, int):
            raise ValueError("path, inode and offset missing or of the wrong type")
        if offset < 0:
            raise ValueError("negative offset")
        return cls(path, inode, offset)


def resume_at(
    cursor: ShipCursor | None, path: str, inode: int, size: int
) -> tuple[int, str | None]:
    """Where to read the file now at ``path`` from, and why it starts over (None: it
    continues where the cursor stands, or starts the very first time)."""
    if cursor is None:
        return 0, None
    if cursor.path != path:
        return 0, f"the audit log is now {path} (was {cursor.path})"
    if cursor.inode != inode:
        return 0, "the audit log was rotated (a new file)"
    if size < cursor.offset:
        return 0, f"the audit log is shorter ({size} bytes) than what was shipped ({cursor.offset})"
    return cursor.offset, None


@dataclass(frozen=True, slots=True)
class Batch:
    """Complete lines to send, and how many bytes of the input they span."""

    lines: tuple[bytes, ...]
    consumed: int


def split_batch(
    data: bytes, *, max_records: int = MAX_RECORDS, max_bytes: int = MAX_BYTES
) -> Batch:
    """The complete lines at the start of ``data``, within the batch limits."""
    lines: list[bytes] = []
    consumed = 0
    while len(lines) < max_records:
        end = data.find(b"\n", consumed)
        if end < 0:
            break
        if lines and end + 1 > max_bytes:
            break
        lines.append(data[consumed:end])
        consumed = end + 1
    return Batch(tuple(lines), consumed)


def parse_records(lines: tuple[bytes, ...]) -> tuple[list[dict[str, Any]], int]:
    """The lines as records, and how many were not JSON objects (a line cut by a crash;
    they are passed over, not sent). Blank lines are neither."""
    records: list[dict[str, Any]] = []
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    return records, bad

"""How `zgate ctl` prints: aligned tables for people, the API's own JSON with ``--json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["Column", "cell", "print_json", "render_table", "when"]

#: A column: its heading and how to take its text from an item.
Column = tuple[str, Callable[[dict[str, Any]], str]]


def print_json(data: Any, stream: TextIO | None = None) -> None:
    """`data` as indented JSON (what the API returned, unchanged)."""
    out = sys.stdout if stream is None else stream
    out.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def cell(value: Any) -> str:
    """A value as table text: ``-`` for none, lists comma-joined, booleans yes/no."""
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(cell(v) for v in value)
    # Control characters would break the columns (and could rewrite the terminal).
    return "".join(ch if ch.isprintable() else "?" for ch in str(value))


def when(value: Any) -> str:
    """An RFC 3339 time as ``YYYY-MM-DD HH:MM:SSZ`` in UTC (``-`` for none)."""
    if not isinstance(value, str) or not value:
        return "-"
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return cell(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def render_table(items: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """`items` as a table: a heading row, then one row per item, columns padded to align
    (the last one is not padded, so no line ends in spaces)."""
    rows = [[heading for heading, _ in columns]]
    rows.extend([cell_of(item) for _, cell_of in columns] for item in items)
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = []
    for row in rows:
        padded = [text.ljust(width) for text, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)

"""Building API paths from operator input."""

from __future__ import annotations

from urllib.parse import quote

__all__ = ["segment"]


def segment(value: str) -> str:
    """`value` as one path segment: a ``/`` or ``?`` in an id must not change the path."""
    return quote(value, safe="")

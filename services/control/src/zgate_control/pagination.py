"""Cursor pagination: opaque cursors over a keyset (e.g. ``(created_at, id)``), so pages stay
stable while rows are added, and no page costs more than its own rows."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Annotated, Any, Final, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from zgate_control.problems import ProblemError

__all__ = ["Limit", "Page", "decode_cursor", "encode_cursor"]

T = TypeVar("T")

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500

#: The ``limit`` query parameter every list takes.
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items per page")]


class Page(BaseModel, Generic[T]):
    """One page of a list; pass ``next_cursor`` as ``cursor`` for the next (null: the end)."""

    items: list[T]
    next_cursor: str | None = None


def _plain(value: Any) -> Any:
    return {"t": value.isoformat()} if isinstance(value, datetime) else value


def _typed(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"t"}:
        return datetime.fromisoformat(value["t"])
    return value


def encode_cursor(key: tuple[Any, ...]) -> str:
    """An opaque cursor for the keyset position `key` (the last item's sort key)."""
    raw = json.dumps([_plain(v) for v in key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, size: int) -> tuple[Any, ...] | None:
    """The keyset position in `cursor` (None: the first page); 400 problem when invalid."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
        if not isinstance(values, list) or len(values) != size:
            raise ValueError("wrong shape")
        return tuple(_typed(v) for v in values)
    except (ValueError, TypeError):
        raise ProblemError(
            400,
            "invalid cursor: pass next_cursor from the previous page as it is",
            slug="invalid-cursor",
        ) from None

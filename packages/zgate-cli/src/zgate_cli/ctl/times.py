"""Times on the command line: ISO 8601, or a duration back from now (``30m``, ``12h``, ``7d``)."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = ["parse_time", "rfc3339"]

_AGO: Final = re.compile(r"(\d+)([smhdw])")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """`text` as an aware time: ISO 8601 (UTC when it names no zone) or ``<N><s|m|h|d|w>``
    meaning that long before `now`. An argparse type: ArgumentTypeError if neither."""
    value = text.strip()
    if (match := _AGO.fullmatch(value)) is not None:
        count, unit = match.groups()
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: int(count)})
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (ISO 8601 like 2026-12-01T08:00Z, or 30m, 12h, 7d ago)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def rfc3339(moment: datetime | None) -> str | None:
    """`moment` as the API takes it (None stays None)."""
    return None if moment is None else moment.isoformat()

"""Structured logs on stdlib logging: JSON lines (or a human format) and bound fields."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

from zgate_host.errors import InvalidArgument

__all__ = [
    "BoundLogger",
    "HumanFormatter",
    "JsonFormatter",
    "bind",
    "configure_logging",
]

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_LEVELS = {"debug", "info", "warning", "error", "critical"}


def _timestamp(created: float) -> str:
    moment = datetime.fromtimestamp(created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _extras(record: logging.LogRecord) -> Iterator[tuple[str, Any]]:
    for key, value in record.__dict__.items():
        if key not in _RECORD_FIELDS and not key.startswith("_"):
            yield key, value


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:  # a broken __str__ must not lose the log line
        return f"<unprintable {type(value).__name__}>"


def _jsonable(value: object) -> object:
    try:
        json.dumps(value, default=_safe_str, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return _safe_str(value)
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, service, logger, msg, the extras, exc/stack."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as a single line of JSON; never fails on odd extras."""
        doc: dict[str, object] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record):
            # An extra may not overwrite a base field; it is kept under another name.
            doc[f"extra_{key}" if key in doc else key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        try:
            return json.dumps(doc, default=_safe_str, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            # Non-string dict keys, cycles, NaN (not JSON): fall back value by value.
            safe = {key: _jsonable(value) for key, value in doc.items()}
            return json.dumps(safe, default=_safe_str, ensure_ascii=False, allow_nan=False)


class HumanFormatter(logging.Formatter):
    """`ts LEVEL service logger: msg key=value ...` for a terminal."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as one line (plus a traceback when there is one)."""
        fields = " ".join(f"{key}={_safe_str(value)}" for key, value in _extras(record))
        line = (
            f"{_timestamp(record.created)} {record.levelname:<8} {self.service} "
            f"{record.name}: {record.getMessage()}"
        )
        if fields:
            line = f"{line} {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class _ZgateHandler(logging.StreamHandler[TextIO]):
    """Marks the handler configure_logging() installed, so a second call replaces it."""


class _StderrHandler(_ZgateHandler):
    """Writes each record to whatever ``sys.stderr`` is when it is logged (as Python's own
    last-resort handler does), not to the stream stderr was at configuration time: a caller
    that redirects or replaces stderr later (a test harness, a daemonizing wrapper) must not
    leave the logs writing into a closed file."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always the current sys.stderr


def configure_logging(
    service: str, *, level: str = "info", json: bool = True, stream: TextIO | None = None
) -> None:
    """Send all logging to `stream` (default: stderr at call time) as JSON lines or text.

    Calling it again replaces the earlier configuration; handlers others added stay.
    """
    name = level.lower()
    if name not in _LEVELS:
        raise InvalidArgument(f"bad log level {level!r} (one of {', '.join(sorted(_LEVELS))})")
    handler = _StderrHandler() if stream is None else _ZgateHandler(stream)
    handler.setFormatter(JsonFormatter(service) if json else HumanFormatter(service))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ZgateHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(name.upper())
    # aioquic logs every connection's version and ALPN at info, and each connection error
    # (a refused handshake, a peer's close) at warning, beside our own line that already
    # says what happened and why: its records are debugging detail, so they are demoted.
    quic = logging.getLogger("quic")
    quic.setLevel(logging.DEBUG if name == "debug" else logging.CRITICAL + 1)
    for old_filter in [f for f in quic.filters if isinstance(f, _DemoteToDebug)]:
        quic.removeFilter(old_filter)
    quic.addFilter(_DemoteToDebug())
    # httpx logs every request at info ("HTTP Request: POST .../heartbeat 200"): a relay that
    # follows a control plane would write a line every few seconds. Our own lines say when a
    # call fails; the requests themselves are debugging detail.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if name == "debug" else logging.WARNING)


class _DemoteToDebug(logging.Filter):
    """Rewrites every record of a third-party logger to level DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno = logging.DEBUG
        record.levelname = "DEBUG"
        return True


class BoundLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger that adds fixed fields (session id, client id) to every record.

    Fields given at the call site with `extra=` win over the bound ones.
    """

    def __init__(self, logger: logging.Logger, fields: Mapping[str, object]) -> None:
        super().__init__(logger, dict(fields))

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        """Merge the bound fields under the call's own `extra`."""
        call_extra = kwargs.get("extra") or {}
        kwargs["extra"] = {**(self.extra or {}), **call_extra}
        return msg, kwargs

    def bind(self, **fields: object) -> BoundLogger:
        """A new BoundLogger with these fields added."""
        return BoundLogger(self.logger, {**(self.extra or {}), **fields})


def bind(logger: logging.Logger | logging.LoggerAdapter[Any], **fields: object) -> BoundLogger:
    """Return `logger` with `fields` added to every record it logs."""
    if isinstance(logger, logging.LoggerAdapter):
        inner: Any = logger.logger
        while isinstance(inner, logging.LoggerAdapter):
            inner = inner.logger
        return BoundLogger(inner, {**(logger.extra or {}), **fields})
    return BoundLogger(logger, fields)

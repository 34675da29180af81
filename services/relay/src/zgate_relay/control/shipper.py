"""Audit shipping: the relay's audit log file, read from where shipping stands, sent to the
control plane in batches; the position (<state_dir>/audit-shipped.json) advances only once
the control plane has taken a batch. At least once: a batch sent again after a crash is
recognised there by its records' ids.

Rotation: the file is kept open, so after logrotate renamed it (and SIGHUP made the writer
open a new one) the rest of the old file is still shipped before the new file is started.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zgate_relay.control.audit_cursor import (
    MAX_BYTES,
    MAX_RECORDS,
    ShipCursor,
    parse_records,
    resume_at,
    split_batch,
)
from zgate_relay.control.backoff import Backoff
from zgate_relay.control.cache import write_atomically
from zgate_relay.control.client import ControlClient, ControlError
from zgate_relay.control.metrics import ControlMetrics

__all__ = ["CURSOR_NAME", "AuditShipper", "load_cursor"]

log = logging.getLogger("zgate.relay.control")

#: The shipping position's file name in the relay's state directory.
CURSOR_NAME = "audit-shipped.json"


def load_cursor(path: Path) -> ShipCursor | None:
    """The saved position; None if there is none or it is unreadable (then everything is
    shipped again: the control plane drops what it has by record id)."""
    try:
        return ShipCursor.from_dict(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error(
            "the audit shipping position is unreadable: shipping the audit log from its start",
            extra={"path": str(path), "error": str(exc)},
        )
        return None


class AuditShipper:
    """Ships ``log_path`` to the control plane, remembering its position in ``cursor_path``."""

    def __init__(
        self,
        client: ControlClient,
        log_path: Path,
        cursor_path: Path,
        metrics: ControlMetrics,
        *,
        interval: float = 1.0,
        backoff: Backoff | None = None,
        max_records: int = MAX_RECORDS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.client = client
        self.log_path = log_path
        self.cursor_path = cursor_path
        self.metrics = metrics
        self.interval = interval
        self.backoff = backoff or Backoff()
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.cursor = load_cursor(cursor_path)
        self.shipped = 0
        self.last_error: str | None = None
        self._file: int | None = None  # the open audit log (a descriptor)
        self._inode = 0
        self._offset = 0

    async def run(self) -> None:
        """Until cancelled: ship while there is something, then look again every interval."""
        try:
            while True:
                try:
                    sent = await self.ship_once()
                except ControlError as exc:
                    self.metrics.audit_ship_errors.inc()
                    if self.last_error is None:
                        log.warning(
                            "audit shipping failed; will send again", extra={"error": str(exc)}
                        )
                    self.last_error = str(exc)
                    await asyncio.sleep(self.backoff.next())
                    continue
                except OSError as exc:
                    log.error("cannot read the audit log to ship it", extra={"error": str(exc)})
                    await asyncio.sleep(self.backoff.next())
                    continue
                if self.last_error is not None:
                    log.info("audit shipping resumed")
                    self.last_error = None
                self.backoff.reset()
                if not sent:
                    await asyncio.sleep(self.interval)
        finally:
            self.close()

    def close(self) -> None:
        """Close the audit log."""
        if self._file is not None:
            os.close(self._file)
            self._file = None

    async def ship_once(self) -> bool:
        """Send the next batch; False when there was nothing new. Raises ControlError
        (nothing advances) or OSError."""
        if self._file is None and not self._open():
            return False
        assert self._file is not None
        lines, consumed = await asyncio.to_thread(self._read)
        if not consumed:
            return self._next_file()
        records, bad = parse_records(lines)
        if bad:
            log.warning("audit log lines that are not records passed over", extra={"lines": bad})
        if records:
            answer = await self.client.ship_audit(records)
            self._report(answer, len(records))
        self._offset += consumed
        self.cursor = ShipCursor(str(self.log_path), self._inode, self._offset)
        await asyncio.to_thread(self._save)
        return True

    def _open(self) -> bool:
        try:
            fd = os.open(self.log_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        st = os.fstat(fd)
        self._file, self._inode = fd, st.st_ino
        self._offset, why = resume_at(self.cursor, str(self.log_path), st.st_ino, st.st_size)
        if why is not None:
            log.warning("audit shipping starts the log over: %s", why)
        return True

    def _read(self) -> tuple[tuple[bytes, ...], int]:
        assert self._file is not None
        size = self.max_bytes
        while True:
            data = os.pread(self._file, size, self._offset)
            batch = split_batch(data, max_records=self.max_records, max_bytes=self.max_bytes)
            if batch.lines or len(data) < size:
                return batch.lines, batch.consumed
            size *= 2  # one record longer than a batch: it goes alone

    def _next_file(self) -> bool:
        """At the end of the open file: move to a new file at the path (rotated), or start
        over in a truncated one. True if it moved (there may be more to send)."""
        assert self._file is not None
        if os.fstat(self._file).st_size < self._offset:
            log.warning("the audit log was truncated: shipping it from its start")
            self._offset = 0
            return True
        try:
            inode = os.stat(self.log_path).st_ino
        except FileNotFoundError:
            return False  # renamed, the new one not yet created
        if inode == self._inode:
            return False
        log.info(
            "audit log rotated: the old file is shipped, continuing from the start of the new one"
        )
        self.close()
        self.cursor = None
        return self._open()

    def _save(self) -> None:
        assert self.cursor is not None
        write_atomically(self.cursor_path, json.dumps(self.cursor.as_dict()).encode() + b"\n")

    def _report(self, answer: Any, sent: int) -> None:
        self.shipped += sent
        self.metrics.audit_shipped.inc(sent)
        if not isinstance(answer, Mapping):
            return
        broken = answer.get("broken") or []
        if broken:
            log.warning(
                "the control plane found broken links in the audit chain",
                extra={"broken": broken[:10], "count": len(broken)},
            )

    def status(self) -> dict[str, object]:
        """For /status."""
        cursor = self.cursor
        return {
            "path": str(self.log_path),
            "offset": cursor.offset if cursor else 0,
            "shipped": self.shipped,
            "last_error": self.last_error,
        }

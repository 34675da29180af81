"""The audit log writer: JSON lines to a file and/or stdout, off the packet loop.

The loop calls :meth:`AuditLog.emit`, which serializes the event and appends the line to a
bounded in-memory queue; a writer thread drains the queue in batches. A thread rather
than non-blocking writes from the loop: O_NONBLOCK has no effect on regular files (a
write to a slow or full disk blocks regardless), and setting it on stdout would change a
descriptor shared with the parent and with ``print``.

Records are never silently lost. When the queue is full the record is counted in
:attr:`AuditLog.dropped`, a warning is logged at most once per ``warn_interval`` seconds,
and once the queue has drained the writer records an ``audit.overflow`` event with the
number dropped since the last one. Lines that a sink refuses (disk full, closed pipe) are
counted in :attr:`AuditLog.failed` and logged the same way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from zgate_policy.audit import AuditEvent, AuditOverflowed

__all__ = ["AuditLog"]

log = logging.getLogger("zgate.relay.audit")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _RateLimitedWarning:
    """Logs a message at most once per interval, saying how often it was suppressed."""

    def __init__(self, interval: float, monotonic: Callable[[], float]) -> None:
        self._interval = interval
        self._monotonic = monotonic
        self._last: float | None = None

    def __call__(self, message: str, *args: object) -> None:
        now = self._monotonic()
        if self._last is None or now - self._last >= self._interval:
            self._last = now
            log.warning(message, *args)


class AuditLog:
    """Writes audit events as JSON lines to ``path`` (appending; created mode 0640) and/or
    ``stream`` (e.g. ``sys.stdout``). Opening the file fails here, at start-up, if it
    cannot be opened.

    ``max_queue`` bounds the records waiting for the writer. :meth:`reopen` (on SIGHUP)
    makes the writer open ``path`` again, for rotation by rename. :meth:`close` writes
    everything queued and stops the writer.
    """

    def __init__(
        self,
        relay: str,
        *,
        path: Path | None = None,
        stream: IO[str] | None = None,
        max_queue: int = 65536,
        warn_interval: float = 10.0,
        clock: Callable[[], datetime] = _utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if path is None and stream is None:
            raise ValueError("an audit log needs a file, a stream or both")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.relay = relay
        self.path = path
        self._stream = stream
        self._max_queue = max_queue
        self._clock = clock
        self._file = self._open() if path is not None else None
        self._warn_dropped = _RateLimitedWarning(warn_interval, monotonic)
        self._warn_failed = _RateLimitedWarning(warn_interval, monotonic)
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._queued = 0  # lines ever queued (or, for overflow records, due)
        self._done = 0  # lines ever taken care of: written or counted as failed
        self._unreported = 0  # drops not yet in an audit.overflow record
        self._reopen = False
        self._closing = False
        #: Records that could not be queued (writer behind, or emitted after close).
        self.dropped = 0
        #: Lines a sink refused (write error); each sink counts separately.
        self.failed = 0
        #: Lines written to every sink.
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="zgate-audit", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Records waiting for the writer."""
        return len(self._queue)

    def emit(self, event: AuditEvent) -> bool:
        """Queue an event; never blocks. False if it was dropped (and counted)."""
        line = event.to_json() + "\n"
        with self._cond:
            if self._closing or len(self._queue) >= self._max_queue:
                self.dropped += 1
                self._unreported += 1
                closing = self._closing
            else:
                self._queue.append(line)
                self._queued += 1
                self._cond.notify()
                return True
        if closing:
            self._warn_dropped("audit record emitted after close; dropped so far: %d", self.dropped)
        else:
            self._warn_dropped("audit writer is behind; records dropped so far: %d", self.dropped)
        return False

    def reopen(self) -> None:
        """Open the file again before the next write (after logrotate renamed it)."""
        with self._cond:
            self._reopen = True
            self._cond.notify()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        with self._cond:
            target = self._queued
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Write everything queued, then stop the writer and close the file."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    def _open(self) -> IO[str]:
        assert self.path is not None
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        return open(fd, "a", encoding="utf-8")

    # --- the writer thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._reopen or self._closing)
                batch = list(self._queue)
                self._queue.clear()
                reopen, self._reopen = self._reopen, False
                closing = self._closing  # emit refuses from now on: the batch is the rest
            if reopen:
                self._do_reopen()
            if batch:
                self._write(batch)
            self._report_overflow()
            if closing:
                break
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                log.warning("closing the audit log failed: %s", exc)

    def _report_overflow(self) -> None:
        """Once the queue has drained, record how many records were dropped meanwhile."""
        with self._cond:
            if self._queue or not self._unreported:
                return
            dropped, self._unreported = self._unreported, 0
            self._queued += 1
        record = AuditOverflowed(self._clock(), self.relay, dropped)
        self._write([record.to_json() + "\n"])

    def _write(self, lines: list[str]) -> None:
        data = "".join(lines)
        ok = True
        for sink in (self._file, self._stream):
            if sink is None:
                continue
            try:
                sink.write(data)
                sink.flush()
            except (OSError, ValueError) as exc:  # ValueError: the sink was closed
                ok = False
                with self._cond:
                    self.failed += len(lines)
                self._warn_failed(
                    "audit log write failed (failed lines so far: %d): %s", self.failed, exc
                )
        with self._cond:
            if ok:
                self.written += len(lines)
            self._done += len(lines)
            self._cond.notify_all()

    def _do_reopen(self) -> None:
        if self.path is None:
            return
        try:
            new = self._open()
        except OSError as exc:
            # Keep writing to the old file rather than losing records; the next SIGHUP
            # tries again.
            log.error("cannot reopen audit log %s: %s", self.path, exc)
            return
        old, self._file = self._file, new
        if old is not None:
            try:
                old.close()
            except OSError as exc:
                log.warning("closing the old audit log failed: %s", exc)

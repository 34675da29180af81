"""The audit log writer: hash-chained JSON lines to a file and/or stdout, off the packet loop.

The loop calls :meth:`AuditLog.emit`, which appends the event to a bounded in-memory queue; a
writer thread drains the queue in batches, links each record into the hash chain
(:mod:`zgate_policy.chain`) and writes it, so the file's order is the chain's order. A thread rather
than non-blocking writes from the loop: O_NONBLOCK has no effect on regular files (a
write to a slow or full disk blocks regardless), and setting it on stdout would change a
descriptor shared with the parent and with ``print``.

Records are never silently lost. When the queue is full the record is counted in
:attr:`AuditLog.dropped`, a warning is logged at most once per ``warn_interval`` seconds,
and once the queue has drained the writer records an ``audit.overflow`` event with the
number dropped since the last one. Lines that a sink refuses (disk full, closed pipe) are
counted in :attr:`AuditLog.failed` and logged the same way; they leave a gap in the file's
chain, which ``zgate audit verify`` reports as records missing.

At start the chain of the existing file continues after its last complete line (read from the
end: the file may be large); a file that is missing, empty or ends in something unchained
starts a new chain. Reopening (rotation) keeps the running chain, so a rotated file's
successor starts where it ended.
"""

from __future__ import annotations

import json
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
from zgate_policy.chain import Chainer, UnchainedRecord, parse_line

__all__ = ["AuditLog"]

log = logging.getLogger("zgate.relay.audit")

#: How far from the end of an existing log to look for its last complete line: far more than
#: any record, and a bound on what a file ending in garbage costs at start.
_TAIL_LIMIT = 1 << 20
_TAIL_CHUNK = 1 << 16


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
    """Writes audit events as hash-chained JSON lines to ``path`` (appending; created mode
    0640) and/or ``stream`` (e.g. ``sys.stdout``). Opening the file fails here, at start-up,
    if it cannot be opened; the chain continues the file's own (see the module docstring).

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
        # Only the writer thread links records once it runs; the file's tail is read here,
        # before the file is opened (opening creates it).
        self._chainer = self._resume_chain()
        self._newline_first = path is not None and _ends_mid_line(path)
        self._file = self._open() if path is not None else None
        self._warn_dropped = _RateLimitedWarning(warn_interval, monotonic)
        self._warn_failed = _RateLimitedWarning(warn_interval, monotonic)
        self._cond = threading.Condition()
        self._queue: deque[AuditEvent] = deque()
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
    def chain(self) -> str:
        """The id of the hash chain this log writes (continued from the file, or new)."""
        return self._chainer.chain

    @property
    def queue_depth(self) -> int:
        """Records waiting for the writer."""
        return len(self._queue)

    def emit(self, event: AuditEvent) -> bool:
        """Queue an event; never blocks. False if it was dropped (and counted)."""
        with self._cond:
            if self._closing or len(self._queue) >= self._max_queue:
                self.dropped += 1
                self._unreported += 1
                closing = self._closing
            else:
                self._queue.append(event)
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

    def _resume_chain(self) -> Chainer:
        """The chain continuing the existing file's last record, or a new one."""
        # Only a regular file has an end to read: a FIFO would block the start, a device
        # (``/dev/stdout``) has no records of ours.
        if self.path is None or not self.path.is_file():
            return Chainer.new()
        try:
            found = _last_complete_line(self.path)
        except OSError as exc:
            return self._new_chain(f"cannot read its end ({exc})")
        if found is None:
            return Chainer.new()  # empty: nothing to continue
        if isinstance(found, str):
            return self._new_chain(found)
        parsed = parse_line(found)
        if not isinstance(parsed, dict):
            return self._new_chain(f"its last line cannot be continued ({parsed})")
        try:
            chainer = Chainer.resume(parsed)
        except UnchainedRecord as exc:
            return self._new_chain(f"its last line cannot be continued ({exc})")
        log.info(
            "audit log %s: continuing chain %s after seq %d", self.path, chainer.chain, chainer.seq
        )
        return chainer

    def _new_chain(self, why: str) -> Chainer:
        chainer = Chainer.new()
        log.warning(
            "audit log %s: %s; starting a new hash chain %s there", self.path, why, chainer.chain
        )
        return chainer

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
        self._write([AuditOverflowed(self._clock(), self.relay, dropped)])

    def _link(self, events: list[AuditEvent]) -> tuple[str, int]:
        """The events as chained JSON lines, linked in the order they are written, and how
        many lines that is."""
        lines = []
        for event in events:
            try:
                record = self._chainer.link(event.to_dict())
                line = json.dumps(record, separators=(",", ":"), ensure_ascii=True)
            except (TypeError, ValueError) as exc:
                # A bug in an event type must not stop the writer (and every record after).
                with self._cond:
                    self.failed += 1
                log.error("audit event %r cannot be written: %s", event, exc)
                continue
            lines.append(line + "\n")
        return "".join(lines), len(lines)

    def _write(self, events: list[AuditEvent]) -> None:
        data, linked = self._link(events)
        ok = True
        for sink in (self._file, self._stream):
            if sink is None or not linked:
                continue
            # After a torn line (a crash or a failed write), the next record starts a line of
            # its own rather than being glued to it; a blank line is harmless.
            prefix = "\n" if sink is self._file and self._newline_first else ""
            try:
                sink.write(prefix + data)
                sink.flush()
                if prefix:
                    self._newline_first = False
            except (OSError, ValueError) as exc:  # ValueError: the sink was closed
                ok = False
                if sink is self._file:
                    self._newline_first = True
                with self._cond:
                    self.failed += linked
                self._warn_failed(
                    "audit log write failed (failed lines so far: %d): %s", self.failed, exc
                )
        with self._cond:
            if ok:
                self.written += linked
            self._done += len(events)
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
        self._newline_first = _ends_mid_line(self.path)
        if old is not None:
            try:
                old.close()
            except OSError as exc:
                log.warning("closing the old audit log failed: %s", exc)


def _ends_mid_line(path: Path) -> bool:
    """Whether the file at ``path`` is non-empty and its last byte is not a newline."""
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return False
            f.seek(size - 1)
            return f.read(1) != b"\n"
    except OSError:
        return False  # missing or unreadable: nothing to mend


def _last_complete_line(path: Path) -> bytes | str | None:
    """The last non-blank newline-terminated line of ``path``, read backwards from the end;
    None when the file is empty or blank; why not when there is no such line within the last
    ``_TAIL_LIMIT`` bytes. A partial line after it (a torn write) is ignored."""
    with open(path, "rb") as f:
        pos = f.seek(0, os.SEEK_END)
        buf = b""
        while pos > 0 and len(buf) < _TAIL_LIMIT:
            step = min(_TAIL_CHUNK, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
            # Up to the last newline (a torn tail dropped), without trailing blank lines.
            complete = buf[: buf.rfind(b"\n") + 1].rstrip()
            start = complete.rfind(b"\n")
            if start >= 0:
                return complete[start + 1 :]
            if complete and pos == 0:
                return complete
    if not buf.strip():
        return None
    if pos == 0:
        return "it has no complete line, only a partial one"
    return f"it has no complete line in its last {len(buf)} bytes"

"""The relay's audit log writer: lines field by field, rotation, overflow accounting with a
writer held up on purpose, write failures, and close flushing the backlog."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from zgate_policy.audit import AuthRefused, PolicyLoaded
from zgate_relay.audit import AuditLog

TS = datetime(2026, 5, 6, 7, 8, 9, 10_000, tzinfo=UTC)
LATER = datetime(2026, 5, 6, 7, 9, 0, tzinfo=UTC)


def event(n: int) -> AuthRefused:
    return AuthRefused(TS, "relay-a", f"198.51.100.{n}:4433", "expired", f"attempt {n}")


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class BlockingStream(io.StringIO):
    """A sink whose first write waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.entered.set()
        assert self.release.wait(10), "the test never released the writer"
        return super().write(s)


class BrokenStream(io.StringIO):
    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_records_are_written_field_by_field(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    stdout = io.StringIO()
    audit = AuditLog("relay-a", path=path, stream=stdout)
    try:
        assert audit.emit(PolicyLoaded(TS, "relay-a", "0123456789ab", "file", 3))
        assert audit.emit(event(1))
        assert audit.flush(10)
    finally:
        audit.close(10)
    first, second = lines(path)
    assert first == {
        "ts": "2026-05-06T07:08:09.010Z",
        "event": "policy.loaded",
        "relay": "relay-a",
        "version": "0123456789ab",
        "source": "file",
        "rules": 3,
    }
    assert second == {
        "ts": "2026-05-06T07:08:09.010Z",
        "event": "auth.refused",
        "relay": "relay-a",
        "peer": "198.51.100.1:4433",
        "reason": "expired",
        "detail": "attempt 1",
    }
    assert stdout.getvalue() == path.read_text()
    assert (audit.written, audit.dropped, audit.failed) == (2, 0, 0)
    assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0  # not world-readable


def test_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"old":true}\n')
    audit = AuditLog("relay-a", path=path)
    audit.emit(event(1))
    audit.close(10)
    assert [r.get("old") for r in lines(path)] == [True, None]


def test_reopen_after_rotation_writes_to_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    rotated = tmp_path / "audit.jsonl.1"
    audit = AuditLog("relay-a", path=path)
    try:
        audit.emit(event(1))
        assert audit.flush(10)
        os.rename(path, rotated)
        audit.emit(event(2))  # before the reopen: still goes to the renamed file
        assert audit.flush(10)
        audit.reopen()
        audit.emit(event(3))
        assert audit.flush(10)
    finally:
        audit.close(10)
    assert [r["detail"] for r in lines(rotated)] == ["attempt 1", "attempt 2"]
    assert [r["detail"] for r in lines(path)] == ["attempt 3"]


def test_a_failed_reopen_keeps_the_old_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    path = directory / "audit.jsonl"
    audit = AuditLog("relay-a", path=path)
    try:
        os.rename(directory, tmp_path / "gone")  # the path can no longer be created
        with caplog.at_level(logging.ERROR, logger="zgate.relay.audit"):
            audit.reopen()
            audit.emit(event(1))
            assert audit.flush(10)
    finally:
        audit.close(10)
    assert [r["detail"] for r in lines(tmp_path / "gone" / "audit.jsonl")] == ["attempt 1"]
    assert "cannot reopen audit log" in caplog.text


def test_overflow_is_counted_logged_and_recorded(caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    stream = BlockingStream()
    audit = AuditLog(
        "relay-a",
        stream=stream,
        max_queue=4,
        warn_interval=30.0,
        clock=lambda: LATER,
        monotonic=lambda: clock[0],
    )
    try:
        with caplog.at_level(logging.WARNING, logger="zgate.relay.audit"):
            assert audit.emit(event(0))
            assert stream.entered.wait(10)  # the writer holds record 0 and is stuck
            assert all(audit.emit(event(n)) for n in range(1, 5))  # fills the queue
            assert audit.queue_depth == 4
            assert [audit.emit(event(n)) for n in range(5, 8)] == [False] * 3
            assert audit.dropped == 3
            assert len(caplog.records) == 1  # one warning, not one per record
            assert "dropped so far: 1" in caplog.text  # said at the first drop
            clock[0] = 31.0
            assert not audit.emit(event(8))
            assert len(caplog.records) == 2 and "dropped so far: 4" in caplog.text
            stream.release.set()
            assert audit.flush(10)
    finally:
        stream.release.set()
        audit.close(10)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["detail"] for r in records[:5]] == [f"attempt {n}" for n in range(5)]
    assert records[5] == {
        "ts": "2026-05-06T07:09:00.000Z",
        "event": "audit.overflow",
        "relay": "relay-a",
        "dropped": 4,
    }
    assert len(records) == 6
    assert audit.dropped == 4 and audit.written == 6


def test_close_flushes_everything(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog("relay-a", path=path, max_queue=10_000)
    for n in range(2000):
        assert audit.emit(event(n % 250))
    audit.close(30)
    assert len(lines(path)) == 2000
    assert audit.written == 2000
    # After close nothing is written, but the loss is still counted.
    assert not audit.emit(event(1))
    assert audit.dropped == 1


def test_write_failures_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    audit = AuditLog("relay-a", stream=BrokenStream())
    with caplog.at_level(logging.WARNING, logger="zgate.relay.audit"):
        audit.emit(event(1))
        audit.emit(event(2))
        assert audit.flush(10)
    audit.close(10)
    assert audit.failed == 2 and audit.written == 0
    assert "audit log write failed" in caplog.text


def test_needs_a_sink() -> None:
    with pytest.raises(ValueError, match="file, a stream"):
        AuditLog("relay-a")
    with pytest.raises(ValueError, match="max_queue"):
        AuditLog("relay-a", stream=io.StringIO(), max_queue=0)


def test_an_unwritable_path_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        AuditLog("relay-a", path=tmp_path / "missing" / "audit.jsonl")

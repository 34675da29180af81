"""The relay's audit log writer: lines field by field, the hash chain (continued across
restarts and rotation, or started anew), overflow accounting with a writer held up on purpose,
write failures, and close flushing the backlog."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest

from zgate_cli.main import main as zgate
from zgate_policy.audit import AuditEvent, AuthRefused, PolicyLoaded
from zgate_policy.chain import CHAIN_FIELDS, GENESIS, record_hash, verify_lines
from zgate_relay import audit as audit_module
from zgate_relay.audit import AuditLog

TS = datetime(2026, 5, 6, 7, 8, 9, 10_000, tzinfo=UTC)
LATER = datetime(2026, 5, 6, 7, 9, 0, tzinfo=UTC)


def event(n: int) -> AuthRefused:
    return AuthRefused(TS, "relay-a", f"198.51.100.{n}:4433", "expired", f"attempt {n}")


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def unchained(record: dict[str, Any]) -> dict[str, Any]:
    """The record's own fields, without the chain's."""
    return {k: v for k, v in record.items() if k not in CHAIN_FIELDS}


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
    assert unchained(first) == {
        "ts": "2026-05-06T07:08:09.010Z",
        "event": "policy.loaded",
        "relay": "relay-a",
        "version": "0123456789ab",
        "source": "file",
        "rules": 3,
    }
    assert unchained(second) == {
        "ts": "2026-05-06T07:08:09.010Z",
        "event": "auth.refused",
        "relay": "relay-a",
        "peer": "198.51.100.1:4433",
        "reason": "expired",
        "detail": "attempt 1",
    }
    assert stdout.getvalue() == path.read_text()
    assert (audit.written, audit.dropped, audit.failed) == (2, 0, 0)
    # Each line ends in its chain fields, in the contract's order.
    assert list(first)[-5:] == list(CHAIN_FIELDS)
    assert (first["chain"], first["seq"], first["prev"]) == (audit.chain, 1, GENESIS)
    assert (second["chain"], second["seq"], second["prev"]) == (audit.chain, 2, first["hash"])
    assert first["hash"] == record_hash(first) and second["hash"] == record_hash(second)
    assert first["id"] != second["id"]
    assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0  # not world-readable


def test_appends_to_an_existing_file_starting_a_new_chain_after_an_unchained_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"old":true}\n')
    with caplog.at_level(logging.WARNING, logger="zgate.relay.audit"):
        audit = AuditLog("relay-a", path=path)
    audit.emit(event(1))
    audit.close(10)
    old, new = lines(path)
    assert old == {"old": True}
    assert (new["chain"], new["seq"], new["prev"]) == (audit.chain, 1, GENESIS)
    assert (
        "its last line cannot be continued (unchained record: no id, chain, seq, prev, hash)"
        in caplog.text
    )
    assert f"starting a new hash chain {audit.chain}" in caplog.text


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
    # The new file goes on with the running chain: both files together are one chain.
    assert [r["seq"] for r in lines(path)] == [3]
    both = verify_lines([*rotated.read_text().splitlines(), *path.read_text().splitlines()])
    [group] = both.groups
    assert both.ok and (group.records, group.first_seq, group.last_seq) == (3, 1, 3)


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
    assert unchained(records[5]) == {
        "ts": "2026-05-06T07:09:00.000Z",
        "event": "audit.overflow",
        "relay": "relay-a",
        "dropped": 4,
    }
    assert len(records) == 6
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6]  # the overflow record is linked too
    assert verify_lines(stream.getvalue().splitlines()).ok
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


# --- the hash chain across restarts ----------------------------------------------------


def write_events(path: Path | None, *numbers: int, stream: io.StringIO | None = None) -> str:
    """Open an audit log, write ``numbers``, close it; the chain it wrote."""
    audit = AuditLog("relay-a", path=path, stream=stream)
    try:
        for n in numbers:
            assert audit.emit(event(n))
    finally:
        audit.close(10)
    return audit.chain


def test_a_restart_continues_the_chain_of_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    first = write_events(path, 1, 2, 3)
    with caplog.at_level(logging.INFO, logger="zgate.relay.audit"):
        second = write_events(path, 4, 5)
    assert first == second
    assert f"continuing chain {first} after seq 3" in caplog.text
    report = verify_lines(path.read_text().splitlines())
    assert report.ok
    [group] = report.groups
    assert (group.relay, group.chain, group.records) == ("relay-a", first, 5)
    assert (group.first_seq, group.last_seq, group.notes) == (1, 5, [])


def test_missing_or_empty_files_start_a_new_chain_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    with caplog.at_level(logging.WARNING, logger="zgate.relay.audit"):
        chains = {write_events(tmp_path / "new.jsonl", 1), write_events(empty, 1)}
    assert len(chains) == 2 and not caplog.records
    assert [r["seq"] for r in lines(empty)] == [1]


def test_without_a_file_the_chain_runs_in_memory() -> None:
    stdout = io.StringIO()
    chain = write_events(None, 1, 2, stream=stdout)
    records = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert [(r["chain"], r["seq"]) for r in records] == [(chain, 1), (chain, 2)]
    assert verify_lines(stdout.getvalue().splitlines()).ok
    assert write_events(None, 3, stream=io.StringIO()) != chain  # nothing to continue


@pytest.mark.parametrize(
    ("tail", "why"),
    [
        (
            '{"ts":"2026-05-06T07:08:09.010Z","event":"x"\n',
            "its last line cannot be continued (not JSON",
        ),
        (
            "[1, 2]\n",
            "its last line cannot be continued (unchained record: a JSON list, not an object)",
        ),
        ('{"partial', "it has no complete line, only a partial one"),
    ],
)
def test_an_unusable_end_starts_a_new_chain_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, tail: str, why: str
) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text(tail)
    with caplog.at_level(logging.WARNING, logger="zgate.relay.audit"):
        chain = write_events(path, 1)
    assert f"audit log {path}: {why}" in caplog.text
    assert f"starting a new hash chain {chain}" in caplog.text
    last = json.loads(path.read_text().splitlines()[-1])
    assert (last["chain"], last["seq"]) == (chain, 1)


def test_a_torn_last_line_is_left_alone_and_the_chain_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    chain = write_events(path, 1, 2)
    with path.open("a") as f:
        f.write('{"ts":"2026-05-06T07:08:09.010Z","event":"auth.ref')  # a crash mid-write
    assert write_events(path, 3) == chain
    text = path.read_text().splitlines()
    assert text[2].endswith('"event":"auth.ref')  # the torn line is on a line of its own
    report = verify_lines(text)
    [group] = report.groups
    assert group.ok and (group.records, group.last_seq) == (3, 3)
    assert [(p.position, p.problem[:8]) for p in report.unchained] == [(3, "not JSON")]


def test_the_end_is_read_in_pieces_from_the_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(audit_module, "_TAIL_CHUNK", 64)  # a record spans several reads
    monkeypatch.setattr(audit_module, "_TAIL_LIMIT", 1024)
    path = tmp_path / "audit.jsonl"
    chain = write_events(path, *range(20))
    with path.open("a") as f:
        f.write("\n\n")  # blank lines at the end are no record
    assert write_events(path, 20) == chain
    assert verify_lines(path.read_text().splitlines()).groups[0].last_seq == 21
    with path.open("a") as f:
        f.write("x" * 2000 + "\n")  # longer than the limit: not read to its start
    with caplog.at_level(logging.WARNING, logger="zgate.relay.audit"):
        assert write_events(path, 21) != chain
    assert "it has no complete line in its last 1024 bytes" in caplog.text


def test_a_huge_file_is_not_read_to_continue_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with path.open("wb") as f:
        f.truncate(1 << 30)  # 1 GiB, sparse: reading it all would take seconds
        f.seek(0, os.SEEK_END)
        f.write(b"\n")
    chain = write_events(path, 1)
    assert write_events(path, 2) == chain
    with path.open("rb") as f:
        f.seek(-4096, os.SEEK_END)
        tail = f.read().split(b"\n")[-3:-1]
    assert [json.loads(line)["seq"] for line in tail] == [1, 2]


def test_verify_finds_a_deleted_and_an_edited_line_across_a_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    write_events(path, 1, 2, 3)
    write_events(path, 4, 5, 6)
    assert zgate(["audit", "verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "6 records, seq 1-6: OK" in out
    text = path.read_text().splitlines(keepends=True)
    path.write_text("".join(text[:3] + text[4:]))  # line 4 deleted
    assert zgate(["audit", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "line 4: seq 5: deleted: seq jumps from 3 to 5, 1 record missing" in out
    text[1] = text[1].replace("attempt 2", "attempt 9")  # line 2 edited
    path.write_text("".join(text))
    assert zgate(["audit", "verify", str(path)]) == 1
    assert "line 2: seq 2: altered" in capsys.readouterr().out


def test_a_fifo_is_not_read_at_start(tmp_path: Path) -> None:
    path = tmp_path / "audit.fifo"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # so that opening it to write works
    with os.fdopen(reader, "rb") as pipe:
        chain = write_events(path, 1)  # would block if it tried to read the FIFO's end
        record = json.loads(pipe.read())
    assert (record["chain"], record["seq"]) == (chain, 1)


@dataclass(frozen=True, slots=True)
class Unwritable(AuditEvent):
    """An event with a field JSON cannot take (a bug the writer must survive)."""

    EVENT: ClassVar[str] = "test.unwritable"

    thing: object


def test_an_event_that_cannot_be_serialized_is_counted_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog("relay-a", path=path)
    try:
        with caplog.at_level(logging.ERROR, logger="zgate.relay.audit"):
            audit.emit(event(1))
            audit.emit(Unwritable(TS, "relay-a", object()))
            audit.emit(event(2))
            assert audit.flush(10)
    finally:
        audit.close(10)
    assert (audit.written, audit.failed) == (2, 1)
    assert "cannot be written" in caplog.text
    assert [r["seq"] for r in lines(path)] == [1, 2]  # the chain has no hole for it
    assert verify_lines(path.read_text().splitlines()).ok


def test_an_unreadable_end_starts_a_new_chain_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    write_events(path, 1)

    def unreadable(path: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(path))

    # Root (as tests often run) reads any file: the refusal is simulated where it is read.
    monkeypatch.setattr(audit_module, "_last_complete_line", unreadable)
    with caplog.at_level(logging.WARNING, logger="zgate.relay.audit"):
        chain = write_events(path, 2)
    assert f"audit log {path}: cannot read its end ([Errno 13] Permission denied" in caplog.text
    assert json.loads(path.read_text().splitlines()[-1])["chain"] == chain

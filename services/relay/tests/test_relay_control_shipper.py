"""Audit shipping from the relay's audit log file: complete lines only, in bounded batches,
the position advanced (and persisted) only after the control plane took a batch, and
rotation and truncation followed. Real files; the control plane is an httpx mock
transport that records what it was sent."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from zgate_relay.control.audit_cursor import ShipCursor, parse_records, resume_at, split_batch
from zgate_relay.control.client import ControlClient, ControlUnavailable
from zgate_relay.control.metrics import ControlMetrics
from zgate_relay.control.shipper import CURSOR_NAME, AuditShipper


def record(n: int, **extra: Any) -> bytes:
    return json.dumps({"event": "flow.allow", "id": f"r{n}", "seq": n, **extra}).encode() + b"\n"


class FakeControl:
    """Takes POST .../audit; answers ``status`` (200 by default)."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.status = 200

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert request.url.raw_path == b"/api/v1/relays/r%201/audit"
        assert request.headers["authorization"] == "Bearer tok"
        if self.status != 200:
            return httpx.Response(self.status, json={"title": "down"})
        records = json.loads(request.content)["records"]
        self.batches.append(records)
        return httpx.Response(
            200, json={"accepted": len(records), "duplicates": 0, "broken": [], "last_seq": 0}
        )

    @property
    def ids(self) -> list[str]:
        return [r["id"] for batch in self.batches for r in batch]


@pytest.fixture
def control() -> FakeControl:
    return FakeControl()


def shipper(tmp_path: Path, control: FakeControl, **kw: Any) -> AuditShipper:
    client = ControlClient(
        "http://control.test", "r 1", "tok", transport=httpx.MockTransport(control.handler)
    )
    metrics = ControlMetrics(CollectorRegistry())
    return AuditShipper(client, tmp_path / "audit.log", tmp_path / CURSOR_NAME, metrics, **kw)


async def ship_all(s: AuditShipper) -> None:
    while await s.ship_once():
        pass


async def ship_fresh(tmp_path: Path, control: FakeControl) -> None:
    """A new shipper (as after a restart) ships all it finds, then closes."""
    s = shipper(tmp_path, control)
    try:
        await ship_all(s)
    finally:
        s.close()


def append(log: Path, data: bytes) -> None:
    with log.open("ab") as f:
        f.write(data)


def saved(tmp_path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((tmp_path / CURSOR_NAME).read_text())
    return result


# ----------------------------------------------------------------------- sans-IO


def test_only_complete_lines_within_the_limits_are_taken() -> None:
    data = record(1) + record(2) + record(3) + b'{"event": "half'
    assert split_batch(data).lines == tuple(record(n)[:-1] for n in (1, 2, 3))
    assert split_batch(data).consumed == len(record(1) + record(2) + record(3))
    assert len(split_batch(data, max_records=2).lines) == 2
    two = len(record(1) + record(2))
    assert split_batch(data, max_bytes=two).consumed == two
    # One line longer than a batch goes alone rather than never.
    assert split_batch(data, max_bytes=5).consumed == len(record(1))
    assert split_batch(b"no newline yet").lines == ()


def test_lines_that_are_not_records_are_counted_not_sent() -> None:
    records, bad = parse_records((record(1)[:-1], b"garbage", b"[1]", b""))
    assert [r["id"] for r in records] == ["r1"] and bad == 2


def test_where_shipping_resumes() -> None:
    cursor = ShipCursor("/a.log", 7, 100)
    assert resume_at(None, "/a.log", 7, 50) == (0, None)
    assert resume_at(cursor, "/a.log", 7, 150) == (100, None)
    assert resume_at(cursor, "/a.log", 8, 150)[0] == 0  # rotated
    assert resume_at(cursor, "/a.log", 7, 99)[0] == 0  # truncated
    assert resume_at(cursor, "/b.log", 7, 150)[0] == 0  # another file
    assert ShipCursor.from_dict(cursor.as_dict()) == cursor


# ---------------------------------------------------------------------- with files


async def test_batches_are_shipped_and_the_position_persisted(
    tmp_path: Path, control: FakeControl
) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(record(n) for n in range(1, 8)) + b'{"event": "cut')
    s = shipper(tmp_path, control, max_records=3)
    await ship_all(s)
    assert [len(b) for b in control.batches] == [3, 3, 1]
    assert control.ids == [f"r{n}" for n in range(1, 8)]
    complete = len(b"".join(record(n) for n in range(1, 8)))
    assert saved(tmp_path) == {"path": str(log), "inode": log.stat().st_ino, "offset": complete}
    # The cut line is completed later: it goes next, alone.
    append(log, b'"}\n')
    await ship_all(s)
    assert control.batches[-1] == [{"event": "cut"}]
    s.close()


async def test_a_failed_batch_does_not_advance_the_position(
    tmp_path: Path, control: FakeControl
) -> None:
    (tmp_path / "audit.log").write_bytes(record(1) + record(2))
    s = shipper(tmp_path, control)
    control.status = 503
    with pytest.raises(ControlUnavailable):
        await s.ship_once()
    assert not (tmp_path / CURSOR_NAME).exists()
    control.status = 200
    await ship_all(s)
    assert control.ids == ["r1", "r2"]
    s.close()


async def test_a_restart_continues_from_the_saved_position(
    tmp_path: Path, control: FakeControl
) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(record(1) + record(2))
    await ship_fresh(tmp_path, control)
    append(log, record(3))
    await ship_fresh(tmp_path, control)
    assert control.ids == ["r1", "r2", "r3"]


async def test_rotation_ships_the_old_files_rest_then_the_new_file(
    tmp_path: Path, control: FakeControl, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "zgate.relay.control")
    log = tmp_path / "audit.log"
    log.write_bytes(record(1))
    s = shipper(tmp_path, control)
    await ship_all(s)
    append(log, record(2))  # written before the rename: still to be shipped
    log.rename(tmp_path / "audit.log.1")
    log.write_bytes(record(3))
    await ship_all(s)
    assert control.ids == ["r1", "r2", "r3"]
    assert saved(tmp_path)["inode"] == log.stat().st_ino
    assert saved(tmp_path)["offset"] == len(record(3))
    assert any("rotated" in r.getMessage() for r in caplog.records)
    s.close()


async def test_a_new_file_found_at_start_is_shipped_from_its_start(
    tmp_path: Path, control: FakeControl
) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(record(1) + record(2))
    await ship_fresh(tmp_path, control)
    log.rename(tmp_path / "audit.log.1")
    log.write_bytes(record(3))
    assert os.stat(log).st_ino != saved(tmp_path)["inode"]
    await ship_fresh(tmp_path, control)
    assert control.ids == ["r1", "r2", "r3"]


async def test_a_truncated_file_is_shipped_again_from_its_start(
    tmp_path: Path, control: FakeControl
) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(record(1) + record(2))
    s = shipper(tmp_path, control)
    await ship_all(s)
    with log.open("r+b") as f:  # copytruncate
        f.truncate(0)
    append(log, record(3))
    await ship_all(s)
    assert control.ids == ["r1", "r2", "r3"]
    s.close()


async def test_an_unreadable_position_ships_everything_again(
    tmp_path: Path, control: FakeControl
) -> None:
    (tmp_path / "audit.log").write_bytes(record(1))
    (tmp_path / CURSOR_NAME).write_text("{oops")
    await ship_fresh(tmp_path, control)
    assert control.ids == ["r1"]


async def test_no_log_file_yet_ships_nothing(tmp_path: Path, control: FakeControl) -> None:
    s = shipper(tmp_path, control)
    assert not await s.ship_once()
    assert control.batches == []

"""Relays following the change log over HTTP: snapshots, long polls woken by a local commit or
by PostgreSQL NOTIFY from another process, and relay tokens bound to their relay."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from zgate_control import changelog
from zgate_control.app import create_app
from zgate_control.db import Database
from zgate_control.settings import ControlSettings
from zgate_control.wakeup import Wakeups

Auth = Callable[..., dict[str, str]]

#: Long enough that an answer well within it can only come from a wake-up, not a re-check.
SLOW_POLL = 10.0


@pytest.fixture
def slow(database: Database, tmp_path: Path, auth: Auth) -> Iterator[TestClient]:
    """An app that re-checks the table only every SLOW_POLL seconds."""
    settings = ControlSettings(state_dir=tmp_path / "slow", poll_interval=SLOW_POLL)
    with TestClient(create_app(settings, database), headers=auth("admin")) as test_client:
        yield test_client


def _append(db: Database, kind: str = "policy") -> int:
    with db.session() as session:
        return changelog.append(session, kind, {"version_id": 1})


def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _waiting(app: FastAPI) -> float:
    value = app.state.metrics.registry.get_sample_value("zgate_control_relay_streams")
    return float(value or 0)


def _poll(client: TestClient, since: int, wait: float = 25) -> tuple[Future[httpx.Response], float]:
    pool = ThreadPoolExecutor(1)
    future = pool.submit(
        client.get, "/api/v1/relays/r1/changes", params={"since": since, "wait": wait}
    )
    pool.shutdown(wait=False)
    app: FastAPI = client.app  # type: ignore[assignment]
    _until(lambda: _waiting(app) == 1 or future.done(), "the long poll to start")
    return future, time.monotonic()


def test_since_zero_gets_a_snapshot_and_the_head_waits(client: TestClient, auth: Auth) -> None:
    relay = auth("relay", relay_id="r1")
    # Nothing ever changed: a new relay's empty state is all there is, so it waits like a
    # relay that is up to date (it would otherwise fetch the same empty snapshot in a loop).
    first = client.get("/api/v1/relays/r1/changes?since=0&wait=0", headers=relay).json()
    assert first == {"type": "changes", "changes": [], "head_seq": 0}
    client.post("/api/v1/connectors", json={"id": "site-a", "prefixes": ["10.0.0.0/8"]})
    at_zero = client.get("/api/v1/relays/r1/changes?since=0&wait=0", headers=relay).json()
    assert at_zero["snapshot"]["connectors"] == {"site-a": ["10.0.0.0/8"]}
    assert at_zero["snapshot"]["seq"] == 1 and at_zero["snapshot"]["policy"] is None
    assert at_zero["snapshot"]["ca_pem"] == client.get("/api/v1/ca").json()["ca_pem"]
    started = time.monotonic()
    idle = client.get("/api/v1/relays/r1/changes?since=1&wait=0", headers=relay).json()
    assert idle == {"type": "changes", "changes": [], "head_seq": 1}
    assert time.monotonic() - started < 5
    ahead = client.get("/api/v1/relays/r1/changes?since=9&wait=0", headers=relay).json()
    assert ahead["type"] == "snapshot"
    for bad in ("since=-1", "since=0&wait=31", "since=x"):
        assert client.get(f"/api/v1/relays/r1/changes?{bad}", headers=relay).status_code == 422


def test_far_behind_gets_a_snapshot(database: Database, tmp_path: Path, auth: Auth) -> None:
    settings = ControlSettings(state_dir=tmp_path / "s", poll_interval=0.2, snapshot_after=2)
    for _ in range(4):
        _append(database)
    with TestClient(create_app(settings, database), headers=auth("relay", "r1")) as client:
        behind = client.get("/api/v1/relays/r1/changes?since=1&wait=0").json()
        assert behind["type"] == "snapshot" and behind["head_seq"] == 4
        near = client.get("/api/v1/relays/r1/changes?since=2&wait=0").json()
        assert [c["seq"] for c in near["changes"]] == [3, 4]
        assert near["changes"][0]["kind"] == "policy" and near["changes"][0]["created_at"]


def test_relay_tokens_read_their_own_changes_only(client: TestClient, auth: Auth) -> None:
    r1 = auth("relay", relay_id="r1")
    assert client.get("/api/v1/relays/r2/changes?wait=0", headers=r1).status_code == 403
    assert client.get("/api/v1/relays/r1/changes?wait=0", headers=r1).status_code == 200
    assert client.get("/api/v1/relays/r1/changes?wait=0", headers=auth("viewer")).status_code == 403


def test_a_local_commit_wakes_the_long_poll(slow: TestClient, database: Database) -> None:
    head = _append(database)
    future, started = _poll(slow, head)
    assert not future.done()
    seq = _append(database)  # from this thread, as a publish would from a worker thread
    answer = future.result(timeout=SLOW_POLL * 3)
    elapsed = time.monotonic() - started
    assert answer.status_code == 200
    body = answer.json()
    assert body["type"] == "changes" and [c["seq"] for c in body["changes"]] == [seq]
    assert elapsed < SLOW_POLL / 2, f"answered after {elapsed:.1f}s: not woken"
    assert _waiting(slow.app) == 0  # type: ignore[arg-type]


def test_another_process_wakes_the_long_poll(
    slow: TestClient, client: TestClient, database: Database, database_url: str
) -> None:
    """Over PostgreSQL, NOTIFY wakes a poll another process's commit concerns at once; over
    SQLite there is no NOTIFY and the re-check every poll_interval finds it."""
    other = Database(database_url)
    try:
        head = _append(other)
        postgres = database.dialect == "postgresql"
        poller = slow if postgres else client
        if postgres:
            # A first poll starts LISTEN; setting it up wakes every waiter once, which must
            # not be what answers the poll below.
            poller.get("/api/v1/relays/r1/changes", params={"since": head, "wait": 0})
            app: FastAPI = poller.app  # type: ignore[assignment]
            _until(lambda: app.state.wakeups.listening, "LISTEN to be set up")
        future, started = _poll(poller, head)
        seq = _append(other)
        answer = future.result(timeout=SLOW_POLL * 3)
        elapsed = time.monotonic() - started
        assert [c["seq"] for c in answer.json()["changes"]] == [seq]
        assert elapsed < SLOW_POLL / 2, f"answered after {elapsed:.1f}s"
    finally:
        other.dispose()


def test_an_idle_long_poll_ends_after_wait(client: TestClient, database: Database) -> None:
    head = _append(database)
    started = time.monotonic()
    answer = client.get("/api/v1/relays/r1/changes", params={"since": head, "wait": 0.5})
    assert answer.json() == {"type": "changes", "changes": [], "head_seq": head}
    assert time.monotonic() - started >= 0.5
    assert _waiting(client.app) == 0  # type: ignore[arg-type]


async def test_wakeups_wake_waiters_from_other_threads_and_on_close(database: Database) -> None:
    wakeups = Wakeups(database)
    watched = wakeups.watch()
    if database.dialect == "postgresql":
        # Setting up LISTEN wakes everyone once (for what was sent meanwhile).
        assert await wakeups.wait(watched, 10)
        assert wakeups.listening
        watched = wakeups.watch()
    assert not await wakeups.wait(watched, 0.05)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, wakeups.wake)  # from a worker thread
    assert await wakeups.wait(watched, 10)
    watched = wakeups.watch()
    closing = asyncio.ensure_future(wakeups.close())
    assert await wakeups.wait(watched, 10)
    await closing
    assert not wakeups.listening

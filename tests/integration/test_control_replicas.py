"""Two zgate-control processes over one PostgreSQL database serve the same relays: nothing
lives only in one process. Started together on an empty database they make one CA and one
bootstrap token between them; a change made through either reaches a relay waiting on the
other at once (PostgreSQL NOTIFY wakes the wait; the table holds the data), with the same
sequence numbers; a token made through one works on the other."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from zgate_testkit.postgres import PostgresServer, find_postgres_bin

POLICY = (
    "default: deny\nrules:\n  - {id: ping, action: allow, from: [alice], to: [203.0.113.0/24]}\n"
)
#: The replicas' periodic re-check of the change log: a wake-up must beat it by far.
POLL_INTERVAL = 10.0
#: How soon a waiting relay must hear of a change made through the other replica.
WAKE_WITHIN = 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica:
    """One `zgate-control serve` process, its log in a file."""

    def __init__(self, database_url: str, state: Path) -> None:
        self.base = f"http://127.0.0.1:{_free_port()}"
        self.log = state.with_suffix(".log")
        env = {
            **os.environ,
            "ZGATE_CONTROL_DATABASE_URL": database_url,
            "ZGATE_CONTROL_POLL_INTERVAL": str(POLL_INTERVAL),
        }
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "zgate_control.cli",
                    "serve",
                    "--listen",
                    self.base.removeprefix("http://"),
                    "--state-dir",
                    str(state),
                    "--log-format",
                    "text",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, deadline: float = 60) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.base} not ready:\n{self.log.read_text()}")

    def tokens_printed(self) -> list[str]:
        return [
            line.strip()
            for line in self.log.read_text().splitlines()
            if line.strip().startswith("zgt_")
        ]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def replicas(
    tmp_path: Path, skip_or_fail: Callable[[str], NoReturn]
) -> Iterator[tuple[Replica, Replica]]:
    """Two replicas started at the same moment over one empty PostgreSQL database."""
    if find_postgres_bin() is None:
        skip_or_fail("no PostgreSQL server binaries (Debian package postgresql)")
    with PostgresServer() as server:
        url = server.create_database("replicas")
        a, b = Replica(url, tmp_path / "a"), Replica(url, tmp_path / "b")
        try:
            a.wait_ready()
            b.wait_ready()
            yield a, b
        finally:
            a.stop()
            b.stop()


class WaitingRelay(threading.Thread):
    """A relay's long poll (GET .../changes?since=N&wait=25) held in a thread."""

    def __init__(self, base: str, relay: str, token: str, since: int) -> None:
        super().__init__(daemon=True)
        self.url = f"{base}/api/v1/relays/{relay}/changes"
        self.params = {"since": since, "wait": 25}
        self.headers = {"Authorization": f"Bearer {token}"}
        self.answer: dict[str, Any] | None = None
        self.answered_at = 0.0

    def run(self) -> None:
        response = httpx.get(self.url, params=self.params, headers=self.headers, timeout=40)
        response.raise_for_status()
        self.answer = response.json()
        self.answered_at = time.monotonic()


def _head(base: str, relay: str, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    response = httpx.get(
        f"{base}/api/v1/relays/{relay}/changes", params={"since": 0, "wait": 0}, headers=headers
    )
    response.raise_for_status()
    return int(response.json()["head_seq"])


def _await_waiting(base: str) -> None:
    """Until the replica counts a held relay stream (its metric), so the change comes after."""
    end = time.monotonic() + 10
    while time.monotonic() < end:
        metrics = httpx.get(f"{base}/metrics").text
        if "zgate_control_relay_streams 1.0" in metrics:
            return
        time.sleep(0.02)
    raise AssertionError("the relay's long poll never reached the replica")


def test_two_replicas_serve_the_same_relays(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    printed = a.tokens_printed() + b.tokens_printed()
    assert len(printed) == 1, f"one bootstrap token between both replicas, got {printed}"
    admin = {"Authorization": f"Bearer {printed[0]}"}
    # one CA: both serve the same certificate
    assert (
        httpx.get(f"{a.base}/api/v1/ca", headers=admin).json()["ca_pem"]
        == (httpx.get(f"{b.base}/api/v1/ca", headers=admin).json()["ca_pem"])
    )
    # a relay token made through B works on A
    created = httpx.post(
        f"{b.base}/api/v1/tokens", headers=admin, json={"name": "r1", "role": "relay"}
    )
    assert created.status_code == 201, created.text
    relay_token = created.json()["token"]
    head = _head(a.base, "r1", relay_token)

    # A relay waits on A; a policy is published through B.
    waiting = WaitingRelay(a.base, "r1", relay_token, head)
    waiting.start()
    _await_waiting(a.base)
    pushed = httpx.post(f"{b.base}/api/v1/policies", headers=admin, json={"yaml": POLICY})
    assert pushed.status_code == 201, pushed.text
    version = pushed.json()["id"]
    published_at = time.monotonic()
    published = httpx.post(f"{b.base}/api/v1/policies/{version}/publish", headers=admin)
    assert published.status_code == 200, published.text
    waiting.join(timeout=30)
    assert waiting.answer is not None
    assert waiting.answered_at - published_at < WAKE_WITHIN
    # The log was empty (head 0): a relay that has nothing gets the whole state.
    assert head == 0 and waiting.answer["type"] == "snapshot"
    assert waiting.answer["head_seq"] == 1
    assert waiting.answer["snapshot"]["policy"]["yaml"] == POLICY

    # And the other way: a relay waits on B; a client is revoked through A.
    added = httpx.post(f"{a.base}/api/v1/clients", headers=admin, json={"id": "alice"})
    assert added.status_code == 201, added.text
    head = _head(b.base, "r1", relay_token)
    waiting = WaitingRelay(b.base, "r1", relay_token, head)
    waiting.start()
    _await_waiting(b.base)
    revoked_at = time.monotonic()
    revoked = httpx.post(f"{a.base}/api/v1/clients/alice/revoke", headers=admin)
    assert revoked.status_code == 200, revoked.text
    waiting.join(timeout=30)
    assert waiting.answer is not None
    assert waiting.answered_at - revoked_at < WAKE_WITHIN
    assert waiting.answer["type"] == "changes"
    [change] = waiting.answer["changes"]
    assert change["kind"] == "revocation" and change["seq"] == head + 1
    assert change["payload"]["client"] == "alice" and change["payload"]["crl_pem"]

    # Both replicas tell the same history, and the relay's acknowledgement through one is
    # what the other reports.
    acked = httpx.post(
        f"{a.base}/api/v1/relays/r1/ack",
        headers={"Authorization": f"Bearer {relay_token}"},
        json={"seq": waiting.answer["changes"][-1]["seq"]},
    )
    assert acked.status_code == 204, acked.text
    seen = [httpx.get(f"{r.base}/api/v1/relays/r1", headers=admin).json() for r in (a, b)]
    assert seen[0]["applied_seq"] == seen[1]["applied_seq"] == waiting.answer["changes"][-1]["seq"]

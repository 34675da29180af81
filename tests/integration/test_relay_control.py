"""A relay following a control plane, in process: run_relay with an in-memory egress device,
an agent on an in-memory device, and a FAKE control plane (the contract's four relay
endpoints over in-memory lists; FastAPI served by uvicorn on 127.0.0.1 in a thread).

What must hold: a published policy is enforced; a revocation (CRL or disabled serial) ends
a live session at once; the relay reports heartbeats and ships its audit records; with the
control plane down at start it enforces its cached snapshot, or denies everything when it
has none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from fastapi import FastAPI, Header, HTTPException, Request, Response

from zgate_agent.app import Agent
from zgate_lab.harness import (
    INTERNET,
    WAIT,
    LogWatcher,
    RunningRelayApp,
    address4,
    app_agent,
    device_of,
    free_udp_port,
    make_pki,
    relay_app,
    udp4,
    until,
    watching_logs,
)
from zgate_pki import revoke_certificate
from zgate_proto.ip import parse_packet
from zgate_relay.control.cache import CACHE_NAME
from zgate_relay.settings import RelaySettings

TOKEN = "zgt_0123456789ab_secret"
RELAY = "relay-under-test"

# alice may reach 203.0.113.0/24 on udp/7 (what udp4() sends to) and nothing else.
POLICY_7 = """\
default: deny
rules:
  - {id: alice-echo, action: allow, from: [alice, bob], to: [203.0.113.0/24], ports: [udp/7]}
"""
POLICY_9 = POLICY_7.replace("udp/7", "udp/9")


# ------------------------------------------------------------- the fake control plane


class FakeControlPlane:
    """The relay sync endpoints of the contract over in-memory lists."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changes: list[dict[str, Any]] = []
        self.acks: list[int] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.audit: list[dict[str, Any]] = []
        self.polls: list[int] = []
        self.app = self._build()

    # --- what the tests do
    def publish(self, kind: str, payload: dict[str, Any]) -> int:
        with self.lock:
            seq = len(self.changes) + 1
            created = datetime.now(UTC).isoformat()
            self.changes.append(
                {"seq": seq, "kind": kind, "payload": payload, "created_at": created}
            )
            return seq

    def publish_policy(self, yaml: str) -> int:
        version = sum(c["kind"] == "policy" for c in self.changes) + 1
        return self.publish(
            "policy",
            {"version_id": version, "digest": f"d{version}", "yaml": yaml, "kind": "publish"},
        )

    def acked(self, seq: int) -> bool:
        with self.lock:
            return bool(self.acks) and self.acks[-1] >= seq

    def events(self) -> list[str]:
        with self.lock:
            return [r["event"] for r in self.audit]

    # --- the contract
    def _snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {"policy": None, "crl_pem": "", "blocked": [], "connectors": {}}
        for change in self.changes:
            payload = change["payload"]
            if change["kind"] == "policy":
                state["policy"] = {k: payload[k] for k in ("version_id", "digest", "yaml")}
            elif change["kind"] == "revocation":
                state["crl_pem"], state["blocked"] = payload["crl_pem"], payload["blocked"]
            elif change["kind"] == "connectors":
                state["connectors"] = payload["connectors"]
        return {"seq": len(self.changes), **state, "ca_pem": "CA"}

    def _build(self) -> FastAPI:
        app = FastAPI()

        def authorize(relay: str, authorization: str | None) -> None:
            if authorization != f"Bearer {TOKEN}":
                raise HTTPException(401, "bad token")
            if relay != RELAY:
                raise HTTPException(403, "not this relay's token")

        @app.get("/api/v1/relays/{relay}/changes")
        async def changes(
            relay: str, since: int, wait: int = 25, authorization: str | None = Header(None)
        ) -> dict[str, Any]:
            authorize(relay, authorization)
            self.polls.append(since)
            deadline = time.monotonic() + wait
            while True:
                with self.lock:
                    head = len(self.changes)
                    if since == 0 or since > head:
                        return {"type": "snapshot", "snapshot": self._snapshot(), "head_seq": head}
                    after = [c for c in self.changes if c["seq"] > since]
                    if after or time.monotonic() >= deadline:
                        return {"type": "changes", "changes": after, "head_seq": head}
                await asyncio.sleep(0.02)

        @app.post("/api/v1/relays/{relay}/ack", status_code=204)
        async def ack(
            relay: str, request: Request, authorization: str | None = Header(None)
        ) -> Response:
            authorize(relay, authorization)
            body = await request.json()
            with self.lock:
                self.acks.append(int(body["seq"]))
            return Response(status_code=204)

        @app.post("/api/v1/relays/{relay}/heartbeat")
        async def heartbeat(
            relay: str, request: Request, authorization: str | None = Header(None)
        ) -> dict[str, Any]:
            authorize(relay, authorization)
            body = await request.json()
            with self.lock:
                self.heartbeats.append(body)
                return {"relay": relay, "head_seq": len(self.changes)}

        @app.post("/api/v1/relays/{relay}/audit")
        async def audit(
            relay: str, request: Request, authorization: str | None = Header(None)
        ) -> dict[str, Any]:
            authorize(relay, authorization)
            records = (await request.json())["records"]
            with self.lock:
                known = {r.get("id") for r in self.audit}
                new = [r for r in records if r.get("id") is None or r.get("id") not in known]
                self.audit.extend(new)
            return {
                "accepted": len(new),
                "duplicates": len(records) - len(new),
                "broken": [],
                "last_seq": 0,
            }

        return app


@contextlib.contextmanager
def serving(control: FakeControlPlane) -> Iterator[str]:
    """The fake on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        control.app, log_config=None, log_level="warning", lifespan="off", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the fake did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(WAIT)
        sock.close()


def closed_port_url() -> str:
    """A URL where nothing listens (the control plane is down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


# ------------------------------------------------------------------ relay and agent


@pytest.fixture
async def logs() -> AsyncIterator[LogWatcher]:
    with watching_logs() as watcher:
        yield watcher


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path / "pki", ["alice", "bob"])


def settings_for(tmp_path: Path, pki: Path, control: str, **values: object) -> RelaySettings:
    base: dict[str, object] = {
        "listen": f"127.0.0.1:{free_udp_port()}",
        "state_dir": tmp_path / "state",
        "pki": pki,
        "metrics": None,
        "dns": False,
        "audit_log": tmp_path / "audit.log",
        "crl_check_interval": 3600,
        "relay_name": RELAY,
        "control": control,
        "control_token": TOKEN,
        "control_wait": 2,
        "control_heartbeat_interval": 0.5,
    }
    base.update(values)
    return RelaySettings(**base)  # type: ignore[arg-type]


async def passes(running: RunningRelayApp, tunnel: Agent, dport: int, sport: int) -> bool:
    """Whether a new flow to INTERNET:dport leaves through egress (else it is answered
    with ICMP administratively prohibited)."""
    packet = udp4(address4(tunnel), str(INTERNET), b"x", sport=sport, dport=dport)
    device_of(tunnel).inject(packet)
    egress, answer = (
        asyncio.ensure_future(running.egress.received(timeout=WAIT)),
        asyncio.ensure_future(device_of(tunnel).received(timeout=WAIT)),
    )
    done, pending = await asyncio.wait({egress, answer}, return_when=asyncio.FIRST_COMPLETED)
    for future in pending:
        future.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await future
    if egress in done:
        assert egress.result() == packet
        return True
    assert parse_packet(answer.result()).proto == 1  # ICMP from the relay
    return False


def serial_hex(pki: Path, client: str) -> str:
    cert = x509.load_pem_x509_certificate((pki / "clients" / f"{client}.pem").read_bytes())
    return f"{cert.serial_number:x}"


# ---------------------------------------------------------------------------- tests


async def test_a_published_policy_is_enforced_reported_and_audited(
    tmp_path: Path, pki: Path
) -> None:
    control = FakeControlPlane()
    control.publish_policy(POLICY_7)
    with serving(control) as url:
        settings = settings_for(tmp_path, pki, url)
        async with relay_app(settings) as running:
            await until(lambda: control.acked(1), WAIT, "the snapshot acknowledged")
            async with app_agent(running, pki, "alice") as alice:
                assert await passes(running, alice, 7, 40001)
                seq = control.publish_policy(POLICY_9)
                await until(lambda: control.acked(seq), WAIT, "the new policy acknowledged")
                assert not await passes(running, alice, 7, 40002)
                assert await passes(running, alice, 9, 40003)

                def alice_reported() -> bool:
                    with control.lock:
                        beats = list(control.heartbeats)
                    return any(
                        b["applied_seq"] == seq
                        and [(s["client"], s["kind"]) for s in b["sessions"]]
                        == [("alice", "client")]
                        for b in beats
                    )

                await until(alice_reported, WAIT, "a heartbeat with alice's session")
            await until(
                lambda: (
                    control.events().count("policy.loaded") >= 3
                    and "session.open" in control.events()
                ),
                WAIT,
                "the audit records shipped",
            )
    cache = json.loads((settings.state_dir / CACHE_NAME).read_text())
    assert cache["seq"] == 2 and cache["policy"]["yaml"] == POLICY_9
    beat = control.heartbeats[-1]
    assert beat["following"] is True and beat["software"].startswith("zgate-relay ")
    assert all(p <= 2 for p in control.polls)


async def test_a_revocation_ends_live_sessions_at_once(
    tmp_path: Path, pki: Path, logs: LogWatcher
) -> None:
    control = FakeControlPlane()
    control.publish_policy(POLICY_7)
    with serving(control) as url:
        async with relay_app(settings_for(tmp_path, pki, url)) as running:
            await until(lambda: control.acked(1), WAIT, "the snapshot acknowledged")
            async with app_agent(running, pki, "alice"), app_agent(running, pki, "bob") as bob:
                # alice's certificate revoked: the CA's CRL comes from the control plane.
                revoke_certificate(pki, "alice")
                crl = (pki / "crl.pem").read_text()
                started = time.monotonic()
                control.publish(
                    "revocation",
                    {"crl_pem": crl, "blocked": [], "client": "alice", "action": "revoke"},
                )
                await until(
                    lambda: logs.count("session closed") == 1, WAIT, "alice's session ended"
                )
                assert time.monotonic() - started < 2.0
                assert bob.connected.is_set()
                # bob disabled: his serial is blocked, not in the CRL.
                started = time.monotonic()
                control.publish(
                    "revocation",
                    {
                        "crl_pem": crl,
                        "blocked": [serial_hex(pki, "bob")],
                        "client": "bob",
                        "action": "disable",
                    },
                )
                await until(lambda: logs.count("session closed") == 2, WAIT, "bob's session ended")
                assert time.monotonic() - started < 2.0
                assert logs.count("certificate revoked: ending its sessions") == 2


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_status_and_metrics_show_how_the_relay_follows(tmp_path: Path, pki: Path) -> None:
    control = FakeControlPlane()
    seq = control.publish_policy(POLICY_7)
    port = free_tcp_port()
    with serving(control) as url:
        settings = settings_for(tmp_path, pki, url, metrics=f"127.0.0.1:{port}")
        async with (
            relay_app(settings),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
        ):
            await until(lambda: control.acked(seq), WAIT, "the snapshot acknowledged")
            status = (await http.get("/status")).json()["control"]
            assert status["connected"] is True and status["applied_seq"] == seq
            assert status["using_cache"] is False and status["policy_version_id"] == 1
            assert status["audit"]["path"] == str(settings.audit_log)
            metrics = (await http.get("/metrics")).text
            for line in (
                "zgate_relay_control_connected 1.0",
                f"zgate_relay_control_applied_seq {float(seq)}",
                "zgate_relay_control_using_cache 0.0",
                'zgate_relay_control_apply_errors_total{kind="policy"} 0.0',
                "zgate_relay_control_audit_ship_errors_total 0.0",
            ):
                assert line in metrics.splitlines(), line
            assert "zgate_relay_control_last_apply_timestamp_seconds" in metrics
            assert "zgate_relay_control_audit_shipped_total" in metrics


async def test_the_cache_is_enforced_while_the_control_plane_is_down_at_start(
    tmp_path: Path, pki: Path, logs: LogWatcher
) -> None:
    control = FakeControlPlane()
    control.publish_policy(POLICY_9)
    seq = control.publish_policy(POLICY_7)
    with serving(control) as url:
        async with relay_app(settings_for(tmp_path, pki, url)):
            await until(lambda: control.acked(seq), WAIT, "the snapshot acknowledged")
    # The control plane is gone; the relay starts from its cache and enforces it.
    port = free_tcp_port()
    down = settings_for(tmp_path, pki, closed_port_url(), metrics=f"127.0.0.1:{port}")
    async with relay_app(down) as running:
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text.splitlines()
        assert "zgate_relay_control_using_cache 1.0" in metrics
        assert f"zgate_relay_control_applied_seq {float(seq)}" in metrics
        await until(
            lambda: (
                logs.count(f"control plane unreachable, enforcing cached snapshot seq {seq} from")
                == 1
            ),
            WAIT,
            "the outage reported",
        )
        async with app_agent(running, pki, "alice") as alice:
            assert await passes(running, alice, 7, 40001)
            assert not await passes(running, alice, 9, 40002)


async def test_without_a_cache_or_a_control_plane_everything_is_denied(
    tmp_path: Path, pki: Path, logs: LogWatcher
) -> None:
    async with relay_app(settings_for(tmp_path, pki, closed_port_url())) as running:
        assert logs.count("FOLLOWING A CONTROL PLANE WITHOUT A CACHED SNAPSHOT") == 1
        await until(
            lambda: logs.count("control plane unreachable and no cached snapshot") == 1,
            WAIT,
            "the outage reported",
        )
        async with app_agent(running, pki, "alice") as alice:
            assert not await passes(running, alice, 7, 40001)


async def test_a_corrupt_cache_is_moved_aside_and_a_bad_token_reported(
    tmp_path: Path, pki: Path, logs: LogWatcher
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / CACHE_NAME).write_text("{half a snapshot")
    control = FakeControlPlane()
    with serving(control) as url:
        async with relay_app(settings_for(tmp_path, pki, url, control_token="zgt_wrong_token")):
            await until(
                lambda: logs.count("refuses this relay's token") == 1, WAIT, "the token error"
            )
    assert (state / f"{CACHE_NAME}.corrupt").exists()
    assert logs.count("cached control-plane snapshot is corrupt") == 1

"""Test helpers for the control plane and its console: a control plane served on loopback in a
thread, identities it issued written as a PKI directory, and a relay in this process that
follows it (dev-only, like the rest of zgate-lab)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from zgate_control.app import create_app
from zgate_control.auth import Role, create_token
from zgate_control.bootstrap import first_start
from zgate_control.db import Database
from zgate_control.settings import ControlSettings
from zgate_lab.harness import RunningRelayApp, free_udp_port, relay_app
from zgate_relay.settings import RelaySettings

__all__ = ["RELAY", "Control", "following_relay", "serve_control", "write_identity_files"]

#: The id of the relay `following_relay` runs.
RELAY = "relay-console"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Control:
    """The control plane under test: its URL, its database and a token per role."""

    url: str
    database: Database
    tokens: dict[str, str]

    def token(self, role: Role, relay_id: str | None = None) -> str:
        key = f"{role}:{relay_id}"
        if key not in self.tokens:
            with self.database.session() as session:
                _, self.tokens[key] = create_token(session, f"{role}-user", role, "tests", relay_id)
        return self.tokens[key]

    def api(self, method: str, path: str, role: Role = "admin", **kw: object) -> httpx.Response:
        """Call the REST API as `role`."""
        headers = {"Authorization": f"Bearer {self.token(role)}"}
        return httpx.request(method, f"{self.url}/api/v1{path}", headers=headers, **kw)  # type: ignore[arg-type]


@contextlib.contextmanager
def serve_control(directory: Path) -> Iterator[Control]:
    """A control plane over SQLite in `directory`, served by uvicorn on a free loopback port in
    a thread, until the block ends."""
    database = Database(f"sqlite:///{directory / 'control.db'}")
    database.upgrade()
    first_start(database, trust_domain="console.test", bootstrap_token=False)
    settings = ControlSettings(state_dir=directory / "state", poll_interval=0.2)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, database), host="127.0.0.1", port=port, log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the control plane did not start"
        time.sleep(0.02)
    try:
        yield Control(f"http://127.0.0.1:{port}", database, {})
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        database.dispose()


def write_identity_files(control: Control, directory: Path, clients: list[str]) -> Path:
    """A PKI directory the control plane issued: the relay's server certificate for
    localhost/127.0.0.1, ca.pem, crl.pem, and clients/<id>.pem|.key."""
    relay = control.api(
        "POST", f"/relays/{RELAY}/certificate", json={"names": ["localhost"], "ips": ["127.0.0.1"]}
    )
    assert relay.status_code in (200, 201), relay.text
    authority = control.api("GET", "/ca").json()
    (directory / "clients").mkdir(parents=True, exist_ok=True)
    bundle = relay.json()["bundle"] if "bundle" in relay.json() else relay.json()
    (directory / "relay.pem").write_text(bundle["cert_pem"])
    (directory / "relay.key").write_text(bundle["key_pem"])
    (directory / "ca.pem").write_text(authority["ca_pem"])
    (directory / "crl.pem").write_text(authority["crl_pem"])
    for client in clients:
        created = control.api("POST", "/clients", json={"id": client, "groups": ["eng"]})
        assert created.status_code == 201, created.text
        issued = created.json()["bundle"]
        (directory / "clients" / f"{client}.pem").write_text(issued["cert_pem"])
        (directory / "clients" / f"{client}.key").write_text(issued["key_pem"])
    return directory


@contextlib.asynccontextmanager
async def following_relay(
    control: Control, tmp_path: Path, pki: Path
) -> AsyncIterator[RunningRelayApp]:
    """A relay in this process that follows `control` (fast heartbeats)."""
    settings = RelaySettings(
        listen=f"127.0.0.1:{free_udp_port()}",
        state_dir=tmp_path / "relay-state",
        pki=pki,
        metrics=None,
        dns=False,
        audit_log=tmp_path / "audit.log",
        relay_name=RELAY,
        control=control.url,
        control_token=control.token("relay", RELAY),
        control_wait=2,
        control_heartbeat_interval=0.5,
    )
    async with relay_app(settings) as running:
        yield running

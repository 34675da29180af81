"""zgate-relay against an independent QUIC stack: a CONNECT-IP client written on quic-go.

The relay's own agent shares its QUIC engine, its H3 layer and its capsule code with the relay,
so agent-relay tests cannot catch a misreading of the RFCs made on both sides. Here the peer is
`connectip_client.go`, built on quic-go and its QPACK library from Debian's packages (GOPATH
mode, no network): it opens a session, reads ADDRESS_ASSIGN and ROUTE_ADVERTISEMENT, pings the
relay's tunnel gateway through an HTTP datagram, and reports every step as JSON lines.

Each test starts `zgate-relay` (its public command line only) in a network namespace of its
own, listening on the namespace's loopback, where the client runs too (`ip netns exec`); the
relay's TUN device lives there, so the kernel answers the ping to the gateway. Every case runs
on each of the relay's QUIC engines.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.needs(
    root=True, tools=("go", "ip"), reason="quic-go client against a relay in a namespace"
)

CLIENT_SOURCE = Path(__file__).with_name("connectip_client.go")
VENV_BIN = Path(sys.executable).parent
RELAY = VENV_BIN / "zgate-relay"
ZGATE = VENV_BIN / "zgate"

ENGINES = ("aioquic", "qh3")
LISTEN_PORT = 4433
POOL = ipaddress.IPv4Network("10.100.0.0/16")
GATEWAY = ipaddress.IPv4Address("10.100.0.1")  # the relay's tunnel address: the pool's first
TUN_NAME = "zgi0"
# QUIC CRYPTO_ERROR (0x100) carrying TLS alert 116, certificate_required (RFC 9001 §4.8).
CERTIFICATE_REQUIRED = 116
CLOSE_CERTIFICATE_REQUIRED = 0x100 + CERTIFICATE_REQUIRED

RELAY_START_SECONDS = 60.0
CLIENT_TIMEOUT_SECONDS = 15
# A cold build of the client with Debian's quic-go took 19 s on a busy 2-core machine.
BUILD_SECONDS = 600

_namespace_ids = itertools.count()


@dataclass(frozen=True)
class Pki:
    """A CA, the relay's certificate (named "relay") and one client certificate."""

    directory: Path
    ca: Path
    client_cert: Path
    client_key: Path


@dataclass
class Relay:
    """A running relay: its network namespace, process and log."""

    namespace: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class ClientRun:
    """One run of the quic-go client: exit status and the JSON events it reported."""

    returncode: int
    events: list[dict[str, Any]]
    stderr: str

    def event(self, name: str) -> dict[str, Any]:
        """The first event called ``name``; fails the test with the whole report if none."""
        for event in self.events:
            if event.get("event") == name:
                return event
        raise AssertionError(f"no {name!r} event in the client's report:\n{self}")

    def __str__(self) -> str:
        lines = [json.dumps(event) for event in self.events]
        return "\n".join([f"exit status {self.returncode}", *lines, self.stderr.strip()])


@pytest.fixture(scope="session")
def quicgo_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client, built once per session from Debian's Go packages only."""
    workdir = tmp_path_factory.mktemp("quicgo")
    binary = workdir / "connectip_client"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"/usr/share/gocode{os.pathsep}{workdir / 'gopath'}",
        "GOCACHE": str(workdir / "cache"),
        "GOFLAGS": "",
        "GOENV": "off",
        "GOPROXY": "off",
    }
    build = subprocess.run(
        ["go", "build", "-o", str(binary), str(CLIENT_SOURCE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
        check=False,
    )
    assert build.returncode == 0, f"go build failed:\n{build.stdout}{build.stderr}"
    return binary


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A PKI made with the operator CLI: `zgate pki init` and `zgate pki issue client`."""
    directory = tmp_path_factory.mktemp("interop-pki") / "pki"
    for command in (
        ["pki", "init", "--dir", str(directory), "--relay-name", "relay"],
        ["pki", "issue", "client", "quicgo", "--dir", str(directory)],
    ):
        subprocess.run([str(ZGATE), *command], check=True, capture_output=True, timeout=60)
    return Pki(
        directory=directory,
        ca=directory / "ca.pem",
        client_cert=directory / "clients" / "quicgo.pem",
        client_key=directory / "clients" / "quicgo.key",
    )


@cache
def relay_help() -> str:
    """`zgate-relay serve --help`, read once: which flags this relay has."""
    return subprocess.run(
        [str(RELAY), "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout


def engine_args(engine: str) -> list[str]:
    """The flags that choose ``engine``; skips an engine this relay cannot choose yet."""
    if "--quic-engine" in relay_help():
        return ["--quic-engine", engine]
    if engine == "aioquic":
        return []  # before the flag, aioquic was the relay's only engine
    pytest.skip(f"zgate-relay serve --help lists no --quic-engine: no {engine} engine to test")


@pytest.fixture(params=ENGINES)
def relay(request: pytest.FixtureRequest, pki: Pki, tmp_path: Path) -> Iterator[Relay]:
    """A relay on one QUIC engine, in a namespace of its own; both gone after the test."""
    with running_relay(request.param, pki, tmp_path) as relay:
        yield relay


@pytest.fixture(params=ENGINES)
def relay_with_retry(request: pytest.FixtureRequest, pki: Pki, tmp_path: Path) -> Iterator[Relay]:
    """As ``relay``, answering every new connection with a Retry first (--retry always)."""
    if "--retry" not in relay_help():
        pytest.skip("zgate-relay serve --help lists no --retry")
    with running_relay(request.param, pki, tmp_path, "--retry", "always") as relay:
        yield relay


@contextlib.contextmanager
def running_relay(engine: str, pki: Pki, tmp_path: Path, *flags: str) -> Iterator[Relay]:
    """A relay on ``engine`` with ``flags``, in a namespace of its own; both gone after."""
    extra = [*engine_args(engine), *flags]
    namespace = f"zgi{os.getpid() % 100000}-{next(_namespace_ids)}"
    log = tmp_path / f"relay-{engine}.log"
    subprocess.run(["ip", "netns", "add", namespace], check=True, timeout=30)
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True, timeout=30)
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", namespace, str(RELAY), *relay_args(pki, tmp_path), *extra],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        relay = Relay(namespace, proc, log)
        wait_for(
            lambda: proc.poll() is not None or relay_is_ready(proc.pid),
            RELAY_START_SECONDS,
            f"the relay ({engine}) to bind UDP {LISTEN_PORT} and create {TUN_NAME}",
            relay,
        )
        assert proc.poll() is None, f"the relay exited early:\n{relay.log_tail()}"
        yield relay
    finally:
        if proc is not None:
            stop(proc)
        subprocess.run(["ip", "netns", "del", namespace], check=False, timeout=30)


def relay_args(pki: Pki, tmp_path: Path) -> list[str]:
    """`zgate-relay serve` flags: loopback only, no NAT, DNS or metrics; files in ``tmp_path``."""
    options = {
        "--pki": str(pki.directory),
        "--listen": f"127.0.0.1:{LISTEN_PORT}",
        "--pool": str(POOL),
        "--tun-name": TUN_NAME,
        "--state-dir": str(tmp_path / "relay-state"),
        "--metrics": "off",
        "--audit-log": str(tmp_path / "audit.log"),
        "--log-format": "json",
    }
    return [*flags(options), "--no-nat", "--no-dns", "--no-dev-pki"]


def flags(options: dict[str, str]) -> list[str]:
    """``{"--name": "value"}`` as ``["--name", "value"]``."""
    return [item for option in options.items() for item in option]


def relay_is_ready(pid: int) -> bool:
    """True once the relay's namespace (seen through /proc/PID/net) has its UDP socket bound
    and its TUN device: the relay's public contract, not a log line's wording."""
    try:
        udp = Path(f"/proc/{pid}/net/udp").read_text()
        devices = Path(f"/proc/{pid}/net/dev").read_text()
    except OSError:
        return False
    port = f":{LISTEN_PORT:04X}"
    bound = any(line.split()[1].endswith(port) for line in udp.splitlines()[1:])
    return bound and f"{TUN_NAME}:" in devices


def wait_for(predicate: Callable[[], bool], seconds: float, what: str, relay: Relay) -> None:
    """Poll ``predicate`` until it holds; fail with the relay's log after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {seconds}s waiting for {what}:\n{relay.log_tail()}"
            )
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the relay removes its device), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def run_client(
    client: Path, relay: Relay, pki: Pki, *, with_cert: bool = True, cid_length: int = 0
) -> ClientRun:
    """Run the quic-go client in the relay's namespace and collect its report; ``cid_length``
    0 is quic-go's default for a client that owns its socket: zero-length connection IDs."""
    credentials = (
        ["-cert", str(pki.client_cert), "-key", str(pki.client_key)] if with_cert else ["-no-cert"]
    )
    options = {
        "-addr": f"127.0.0.1:{LISTEN_PORT}",
        "-server-name": "relay",
        "-ca": str(pki.ca),
        "-gateway": str(GATEWAY),
        "-timeout": f"{CLIENT_TIMEOUT_SECONDS}s",
        "-connection-id-length": str(cid_length),
    }
    done = subprocess.run(
        ["ip", "netns", "exec", relay.namespace, str(client), *flags(options), *credentials],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_SECONDS + 30,
        check=False,
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return ClientRun(done.returncode, events, done.stderr)


def assert_session_works(run: ClientRun, relay: Relay) -> None:
    """Case (a): session opened, an address and routes arrived, the gateway answered."""
    assert run.returncode == 0, f"{run}\nrelay log:\n{relay.log_tail()}"
    assert run.events[-1]["event"] == "done", str(run)

    handshake = run.event("handshake")
    assert handshake["alpn"] == "h3" and handshake["datagrams"] is True, str(run)
    assert handshake["tls_version"] == "0x0304", str(run)  # TLS 1.3

    response = run.event("response")["headers"]
    assert response[":status"] == "200" and response["capsule-protocol"] == "?1", str(run)

    assigned = [
        ipaddress.ip_network(address["prefix"])
        for address in run.event("address_assign")["addresses"]
    ]
    ipv4 = [net for net in assigned if isinstance(net, ipaddress.IPv4Network)]
    assert len(ipv4) == 1 and ipv4[0].prefixlen == 32, str(run)
    address = ipv4[0].network_address
    assert address in POOL and address != GATEWAY, str(run)

    ranges = run.event("route_advertisement")["ranges"]
    ipv4_ranges = [
        (ipaddress.IPv4Address(r["start"]), ipaddress.IPv4Address(r["end"]))
        for r in ranges
        if ipaddress.ip_address(r["start"]).version == 4
    ]
    assert any(start <= GATEWAY <= end for start, end in ipv4_ranges), (
        f"no advertised route reaches the gateway {GATEWAY}:\n{run}"
    )

    reply = run.event("echo_reply")
    assert reply["from"] == str(GATEWAY) and reply["to"] == str(address), str(run)


@pytest.mark.parametrize("cid_length", [0, 8], ids=["zero-length-cid", "8-byte-cid"])
def test_interop_quicgo_session_and_ping(
    quicgo_client: Path, pki: Pki, relay: Relay, cid_length: int
) -> None:
    """A quic-go client opens a CONNECT-IP session, gets its address and routes, and its ping
    to the relay's gateway is answered through the tunnel; with quic-go's default zero-length
    client connection IDs (RFC 9000 §5.1: the server must cope) and with 8-byte ones."""
    run = run_client(quicgo_client, relay, pki, cid_length=cid_length)
    assert_session_works(run, relay)


def test_interop_quicgo_refused_without_certificate(
    quicgo_client: Path, pki: Pki, relay: Relay
) -> None:
    """Without a client certificate the relay refuses the handshake with certificate_required
    (QUIC close code 0x174) and keeps serving others. 8-byte connection IDs: this case is
    about the refusal; zero-length ones have their own case above."""
    refused = run_client(quicgo_client, relay, pki, with_cert=False, cid_length=8)

    assert refused.returncode == 1, str(refused)
    error = refused.events[-1]
    assert error["event"] == "error", str(refused)
    assert error.get("transport_error_code") == CLOSE_CERTIFICATE_REQUIRED, str(refused)
    assert error.get("tls_alert") == CERTIFICATE_REQUIRED and error["remote"] is True, str(refused)
    assert not any(event["event"] == "response" for event in refused.events), str(refused)

    assert relay.proc.poll() is None, f"the relay died after a refusal:\n{relay.log_tail()}"
    assert_session_works(run_client(quicgo_client, relay, pki, cid_length=8), relay)


def test_interop_quicgo_through_a_retry(
    quicgo_client: Path, pki: Pki, relay_with_retry: Relay
) -> None:
    """With --retry always the quic-go client's first Initial is answered with a Retry (RFC
    9000 §8.1.2); quic-go checks its integrity tag (RFC 9001 §5.8) and the transport
    parameters that echo the connection IDs (RFC 9000 §7.3), then opens its session."""
    assert_session_works(
        run_client(quicgo_client, relay_with_retry, pki, cid_length=8), relay_with_retry
    )

"""Connection attempts as an operator sees them, against a real relay in this process
(loopback QUIC, in-memory devices): the "connecting to" line, one plain line per failure
with its fix, permanent failures on the long backoff, stop at any moment, no asyncio noise."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from zgate_agent.app import Agent
from zgate_agent.metrics import AgentMetrics
from zgate_agent.settings import AgentSettings
from zgate_host.memdev import MemoryPacketDevice
from zgate_lab.harness import RelayUnderTest, agent_settings, make_pki, running_relay, until
from zgate_pki import revoke_certificate
from zgate_proto.engines import ENGINES
from zgate_proto.session import PacketMode

# A permanent failure waits 20-40 s before its next attempt: longer than any test here.
SLOW = {"backoff_permanent": 40.0, "backoff_permanent_max": 600.0}


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """The agent's QUIC engine (the relay's is the relay's concern)."""
    name: str = request.param
    return name


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path / "pki", ["alice", "bob"])


@pytest.fixture
def other_pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path / "other", ["alice"])


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Records at info and up; afterwards (with every dead task collected) none from asyncio
    or aioquic at warning or above: no "Future exception was never retrieved", no "Task was
    destroyed but it is pending", no aioquic "Error: 298" lines."""
    caplog.set_level(logging.INFO)
    yield caplog
    gc.collect()
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    noisy = [
        r
        for r in records
        if r.levelno >= logging.WARNING and r.name.split(".")[0] in ("asyncio", "quic")
    ]
    assert not noisy, [r.getMessage() for r in noisy]


@pytest.fixture(autouse=True)
async def loop_debug() -> AsyncIterator[None]:
    """asyncio's debug mode: it reports more of what is left behind (not slow steps: this
    machine may be busy)."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 60.0
    yield


@dataclass
class Running:
    agent: Agent
    task: asyncio.Task[None]
    device: MemoryPacketDevice

    async def stop(self, bound: float = 1.0) -> float:
        """Stop the agent; how long it took to end."""
        start = time.monotonic()
        self.agent.stop()
        await asyncio.wait_for(self.task, bound)
        self.device.close()
        return time.monotonic() - start


def run_agent(relay: RelayUnderTest | None, port: int = 0, *, engine: str, **kw: object) -> Running:
    """Alice's agent on an in-memory device, against ``relay`` or (with ``pki=``) ``port``,
    on QUIC engine ``engine``."""
    values: dict[str, object] = {"connect_timeout": 5.0, "quic_engine": engine}
    values.update(kw)
    if relay is None:  # a port that never answers
        pki = Path(str(values.pop("pki")))
        values.update(
            relay=f"127.0.0.1:{port}",
            ca=pki / "ca.pem",
            cert=pki / "clients" / "alice.pem",
            key=pki / "clients" / "alice.key",
            server_name="localhost",
            metrics=None,
        )
        settings = AgentSettings(**values)  # type: ignore[arg-type]
    else:
        settings = agent_settings(relay, "alice", PacketMode.DATAGRAM, **values)
    device = MemoryPacketDevice("mem-alice")
    agent = Agent(settings, device, AgentMetrics(), configure_host=False)
    return Running(agent, asyncio.create_task(agent.run()), device)


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A UDP port on 127.0.0.1 that reads every datagram and answers none."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    try:
        yield int(transport.get_extra_info("sockname")[1])
    finally:
        transport.close()


def agent_records(
    caplog: pytest.LogCaptureFixture, level: int | None = None
) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "zgate.agent" and (level is None or r.levelno == level)
    ]


def reissued(pki: Path, client: str, start: datetime, end: datetime, out: Path) -> Path:
    """The client's certificate again (same key and names), valid from start to end."""
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    old = x509.load_pem_x509_certificate((pki / "clients" / f"{client}.pem").read_bytes())
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(ca.subject)
        .public_key(old.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )
    for extension in old.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    cert = builder.sign(ca_key, hashes.SHA256())
    out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out


# ---------------------------------------------------------------- what is said


async def test_connecting_is_logged_before_the_first_attempt_ends(
    engine: str, pki: Path, silent_port: int, logs: pytest.LogCaptureFixture
) -> None:
    running = run_agent(None, silent_port, engine=engine, pki=pki, connect_timeout=30.0)
    try:
        await until(lambda: bool(agent_records(logs)), what="a first line")
        first = agent_records(logs)[0]
        assert first.levelno == logging.INFO
        assert first.getMessage() == (
            f"connecting to 127.0.0.1:{silent_port} (server name localhost)"
        )
        assert first.__dict__["server_name"] == "localhost"
        assert running.agent.status()["state"] == "connecting"
    finally:
        await running.stop()


async def test_no_answer_is_transient_and_retried_soon(
    engine: str, pki: Path, silent_port: int, logs: pytest.LogCaptureFixture
) -> None:
    running = run_agent(
        None,
        silent_port,
        engine=engine,
        pki=pki,
        connect_timeout=0.3,
        backoff_initial=0.05,
        backoff_max=0.1,
    )
    try:
        await until(lambda: running.agent.status()["attempts"] >= 3, what="quick retries")
        line = agent_records(logs, logging.WARNING)[0]
        expected = (
            f"no answer from the relay at 127.0.0.1:{silent_port} within 0.3s (is it "
            f"running, and is UDP port {silent_port} reachable from here?)"
        )
        assert line.getMessage() == f"tunnel down: {expected}"
        assert line.__dict__["permanent"] is False
        assert line.__dict__["retry_in_seconds"] <= 0.1
        assert running.agent.status()["last_error"] == expected
        assert not agent_records(logs, logging.ERROR)
        # Only the first attempt's "connecting to" is at info; the quick retries' at debug.
        connecting = [r for r in agent_records(logs) if "connecting to" in r.getMessage()]
        assert len(connecting) == 1
    finally:
        await running.stop()


@dataclass(frozen=True)
class Case:
    """A misconfiguration, how to make it, and what the operator must read."""

    name: str
    expected: tuple[str, ...]


CASES = [
    Case(
        "unknown CA (the relay's certificate)",
        ("the relay's certificate is not signed by --ca ", "other/ca.pem", "use the CA"),
    ),
    Case(
        "server name mismatch",
        (
            "the relay's certificate is not valid for name wrong.example "
            "(it names: localhost, 127.0.0.1, ::1); pass --server-name with one of those, "
            "or re-issue it with `zgate pki init --relay-name wrong.example`",
        ),
    ),
    Case(
        "our certificate from another CA",
        ("the relay refused our certificate --cert ", "not issued by the relay's CA"),
    ),
    Case("revoked", ("the relay refused our certificate --cert ", "it has been revoked")),
    Case(
        "key of another certificate (past the start-up check)",
        (
            "the relay refused our certificate --cert ",
            "the handshake signature does not verify (is --key the key of --cert?)",
        ),
    ),
    Case(
        "expired (by the relay's clock)",
        ("the relay refused our certificate --cert ", "expired", "zgate pki issue client"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_a_permanent_failure_is_one_plain_line_and_the_long_backoff(
    engine: str,
    case: Case,
    pki: Path,
    other_pki: Path,
    tmp_path: Path,
    logs: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    async with running_relay(pki) as relay:
        kw: dict[str, object] = dict(SLOW)
        if case.name.startswith("unknown CA"):
            kw["ca"] = other_pki / "ca.pem"
        elif case.name == "server name mismatch":
            kw["server_name"] = "wrong.example"
        elif case.name.startswith("our certificate from another CA"):
            kw["cert"] = other_pki / "clients" / "alice.pem"
            kw["key"] = other_pki / "clients" / "alice.key"
        elif case.name.startswith("key of another certificate"):
            kw["key"] = pki / "clients" / "bob.key"
        elif case.name == "revoked":
            revoke_certificate(pki, "alice")
        elif case.name.startswith("expired"):
            now = datetime.now(UTC)
            kw["cert"] = reissued(
                pki, "alice", now - timedelta(days=30), now - timedelta(days=1), tmp_path / "x.pem"
            )
        running = run_agent(relay, 0, engine=engine, **kw)
        try:
            await until(lambda: bool(agent_records(logs, logging.ERROR)), what="the error line")
            await asyncio.sleep(0.3)  # no second attempt follows soon
            errors = agent_records(logs, logging.ERROR)
            assert len(errors) == 1
            line = errors[0].getMessage()
            for part in case.expected:
                assert part in line, line
            assert "\n" not in line
            assert errors[0].__dict__["permanent"] is True
            assert errors[0].__dict__["retry_in_seconds"] >= SLOW["backoff_permanent"] / 2
            status = running.agent.status()
            assert status["last_error"] == line
            assert status["attempts"] == 1
            assert status["state"] == "reconnecting"
            assert not agent_records(logs, logging.WARNING)
        finally:
            # Stopping during the long backoff is immediate too.
            assert await running.stop() < 1.0


async def test_the_permanent_backoff_grows_to_its_maximum(
    engine: str, pki: Path, other_pki: Path, logs: pytest.LogCaptureFixture
) -> None:
    async with running_relay(pki) as relay:
        running = run_agent(
            relay,
            engine=engine,
            ca=other_pki / "ca.pem",
            backoff_initial=5.0,
            backoff_permanent=0.1,
            backoff_permanent_max=0.2,
        )
        try:
            await until(lambda: len(agent_records(logs, logging.ERROR)) >= 4, what="retries")
            delays = [r.__dict__["retry_in_seconds"] for r in agent_records(logs, logging.ERROR)]
            assert all(0.05 <= d <= 0.2 for d in delays), delays
            # Each retry of a permanent failure says again where it connects, at info.
            connecting = [r for r in agent_records(logs) if "connecting to" in r.getMessage()]
            assert all(r.levelno == logging.INFO for r in connecting)
        finally:
            await running.stop()


# ---------------------------------------------------------------- stopping


async def test_stop_while_connecting_ends_at_once(
    engine: str, pki: Path, silent_port: int, logs: pytest.LogCaptureFixture
) -> None:
    running = run_agent(None, silent_port, engine=engine, pki=pki, connect_timeout=30.0)
    await until(lambda: running.agent.status()["state"] == "connecting", what="connecting")
    await asyncio.sleep(0.2)  # a few handshake retransmissions in flight
    took = await running.stop()
    assert took < 0.2, took
    assert running.agent.status()["state"] == "stopped"
    assert agent_records(logs)[-1].getMessage() == "stopped"


async def test_stop_while_waiting_to_retry_ends_at_once(
    engine: str, pki: Path, silent_port: int, logs: pytest.LogCaptureFixture
) -> None:
    running = run_agent(
        None,
        silent_port,
        engine=engine,
        pki=pki,
        connect_timeout=0.1,
        backoff_initial=30.0,
        backoff_max=30.0,
    )
    await until(lambda: running.agent.status()["state"] == "reconnecting", what="the backoff")
    took = await running.stop()
    assert took < 0.2, took


async def test_stop_while_connected_closes_the_session_at_once(
    engine: str, pki: Path, logs: pytest.LogCaptureFixture
) -> None:
    async with running_relay(pki) as relay:
        running = run_agent(relay, engine=engine)
        await asyncio.wait_for(running.agent.connected.wait(), 10)
        sessions = relay.metrics.registry.get_sample_value("zgate_relay_sessions")
        assert sessions == 1
        assert running.agent.status()["quic_engine"] == engine
        took = await running.stop()
        assert took < 0.2, took
        # The relay heard the agent's CONNECTION_CLOSE: its session is gone at once.
        await until(
            lambda: relay.metrics.registry.get_sample_value("zgate_relay_sessions") == 0,
            timeout=2,
            what="the relay to end the session",
        )

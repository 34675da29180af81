"""A real `zgate-agent up` (TUN device, needs root) ends within a second of SIGINT or SIGTERM,
whether it is connecting, waiting to retry or connected, and logs its cleanup; no asyncio
noise. And no route to the relay is said at once (a network namespace, root too)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from zgate_lab.lab import Lab, have_tools
from zgate_pki import init_pki, issue_certificate
from zgate_proto.engines import ENGINES

AGENT = Path(sys.executable).parent / "zgate-agent"
BOUND = 1.0  # seconds from the signal to the process's exit


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (the agent opens a TUN device)"
    if not Path("/dev/net/tun").exists():
        return "needs /dev/net/tun"
    if not AGENT.exists():
        return f"needs {AGENT}"
    return have_tools()


@pytest.fixture(autouse=True)
def _needs_root(skip_or_fail: Callable[[str], NoReturn]) -> None:
    # Under ZGATE_REQUIRE_E2E=1 (CI) nothing is skipped, as in tests/e2e.
    if (reason := _skip_reason()) is not None:
        skip_or_fail(reason)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A UDP port on 127.0.0.1 that reads and drops every datagram, answering none."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    done = threading.Event()

    def drain() -> None:
        while not done.is_set():
            try:
                sock.recv(65535)
            except (TimeoutError, OSError):
                continue

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        done.set()
        reader.join()
        sock.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("phase", ["connecting", "waiting to retry"])
def test_a_signal_ends_the_agent_within_a_second(
    sig: signal.Signals, phase: str, silent_port: int, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    init_pki(pki)
    issue_certificate(pki, "client", "alice")
    tun = f"zgs{os.getpid() % 100000}{sig.value}{len(phase)}"[:15]
    env = dict(os.environ, ZGATE_AGENT_BACKOFF_INITIAL="30")
    command = [
        str(AGENT),
        "up",
        "--relay",
        f"127.0.0.1:{silent_port}",
        "--server-name",
        "localhost",
        "--ca",
        str(pki / "ca.pem"),
        "--cert",
        str(pki / "clients" / "alice.pem"),
        "--key",
        str(pki / "clients" / "alice.key"),
        "--metrics",
        "off",
        "--no-dns",
        "--tun-name",
        tun,
        "--connect-timeout",
        "30" if phase == "connecting" else "0.3",
        "--log-format",
        "json",
    ]
    if (
        "--no-dns"
        not in subprocess.run([str(AGENT), "up", "--help"], capture_output=True, text=True).stdout
    ):
        command.remove("--no-dns")
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stderr is not None
    wanted = "connecting to" if phase == "connecting" else "tunnel down"
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if wanted in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(15), "".join(lines)
        time.sleep(0.2)  # well inside the attempt, or the 15-30 s wait before the next
        sent = time.monotonic()
        process.send_signal(sig)
        code = process.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(5)
    process.stderr.close()
    output = "".join(lines)
    assert took < BOUND, f"exit took {took:.3f}s\n{output}"
    assert code == 0, output
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) == len(lines), output  # nothing but JSON lines: no traceback
    messages = [r["msg"] for r in records]
    assert messages[0] == f"connecting to 127.0.0.1:{silent_port} (server name localhost)"
    assert "stopped" in messages
    assert messages[-1] == "TUN device removed"
    assert not [r for r in records if r["level"] in ("error", "critical")], output
    assert not [r for r in records if r["logger"].split(".")[0] in ("asyncio", "quic")], output
    if phase == "waiting to retry":
        down = next(r for r in records if r["msg"].startswith("tunnel down"))
        assert down["retry_in_seconds"] >= 15


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_a_connected_agent_within_a_second(
    sig: signal.Signals, engine: str, tmp_path: Path
) -> None:
    """A connected agent in the lab's namespaces (real relay, TUN device, routes): it
    closes the session, removes its routes and its TUN device, and says so."""
    lab = Lab(tag=f"sg{os.getpid() % 10000}{sig.value}{engine[0]}", workdir=tmp_path / "lab")
    try:
        lab.build(agents=1)
        lab.make_pki(clients=("agent1",))
        lab.start_relay()
        extra = ["--no-dns"] if _has_dns_flags() else []
        agent = lab.start_agent(1, extra=[*extra, "--quic-engine", engine])
        routes = lab.ns(lab.agent_ns(1), "ip", "route", "show", "dev", "ztun0").stdout
        assert routes.strip(), "the agent routes through its TUN device"
        sent = time.monotonic()
        agent.proc.send_signal(sig)
        code = agent.proc.wait(timeout=10)
        took = time.monotonic() - sent
        output = agent.log()
        assert took < BOUND, f"exit took {took:.3f}s\n{output}"
        assert code == 0, output
        records = agent.json_log()
        stopped = next(r for r in records if r["msg"] == "stopped")
        assert stopped["removed"], output  # the routes it had added
        assert records[-1]["msg"] == "TUN device removed", output
        assert not [r for r in records if r["level"] in ("error", "critical")], output
        link = lab.ns(lab.agent_ns(1), "ip", "link", "show", "ztun0", check=False)
        assert link.returncode != 0, "the TUN device is gone"
        # The relay heard the close: its session ended at once, not at its idle timeout.
        start = time.monotonic()
        while lab.relay_metric("zgate_relay_sessions") != 0:
            assert time.monotonic() - start < 2, "the relay still holds the session"
            time.sleep(0.05)
    finally:
        lab.teardown()


def _has_dns_flags() -> bool:
    help_text = subprocess.run([str(AGENT), "up", "--help"], capture_output=True, text=True)
    return "--no-dns" in help_text.stdout


@pytest.mark.needs(tools=("unshare",), reason="a network namespace without routes")
def test_no_route_to_the_relay_is_said_at_once(tmp_path: Path) -> None:
    """In a network namespace without routes, an attempt fails at once as network
    unreachable (transient), not as a connect timeout."""
    pki = tmp_path / "pki"
    init_pki(pki)
    issue_certificate(pki, "client", "alice")
    script = f"""
import asyncio, time
from pathlib import Path
from zgate_agent.app import Agent
from zgate_agent.metrics import AgentMetrics
from zgate_agent.settings import AgentSettings
from zgate_host.memdev import MemoryPacketDevice

async def main():
    pki = Path({str(pki)!r})
    settings = AgentSettings(
        relay="192.0.2.1:4433", ca=pki / "ca.pem", cert=pki / "clients" / "alice.pem",
        key=pki / "clients" / "alice.key", metrics=None, connect_timeout=30,
    )
    agent = Agent(settings, MemoryPacketDevice("mem"), AgentMetrics(), configure_host=False)
    task = asyncio.create_task(agent.run())
    start = time.monotonic()
    while agent.status()["last_error"] is None and time.monotonic() - start < 10:
        await asyncio.sleep(0.01)
    print(round(time.monotonic() - start, 3), agent.status()["last_error"])
    agent.stop()
    await task

asyncio.run(main())
"""
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seconds, error = done.stdout.strip().split(" ", 1)
    assert error == "cannot reach the relay at 192.0.2.1:4433: Network is unreachable"
    assert float(seconds) < 1.0

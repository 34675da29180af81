"""run_relay's wiring, in process and without root: start-up refusals, the allow-all default,
SIGHUP (policy reload, CRL reload, audit log reopened), the periodic CRL check and SIGTERM.

The relay runs with an in-memory egress device (run_relay's ``egress_device``) and agents on
in-memory devices; signals go to this process only while run_relay's handlers are installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from zgate_host.memdev import MemoryPacketDevice
from zgate_lab.harness import (
    INTERNET,
    QUIC_ENGINES,
    WAIT,
    LogWatcher,
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
from zgate_relay.app import run_relay
from zgate_relay.settings import RelaySettings
from zgate_relay.startup import StartupError

# alice may reach 203.0.113.0/24 on udp/7 (what udp4() sends to) and nothing else.
POLICY = """\
default: deny
rules:
  - {id: alice-echo, action: allow, from: [alice], to: [203.0.113.0/24], ports: [udp/7]}
tests:
  - {from: alice, to: "udp://203.0.113.10:7", expect: allow}
"""
POLICY_PORT_9 = POLICY.replace("udp/7", "udp/9").replace(":7", ":9")
POLICY_FAILING_TEST = POLICY.replace("expect: allow", "expect: deny")
POLICY_INVALID = "default: deny\nrules:\n  - {id: x, action: perhaps, from: [alice]}\n"


@pytest.fixture
async def logs() -> AsyncIterator[LogWatcher]:
    with watching_logs() as watcher:
        yield watcher


@pytest.fixture(autouse=True, params=QUIC_ENGINES)
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every relay here runs once on each QUIC engine (chosen as an operator would)."""
    name: str = request.param
    monkeypatch.setenv("ZGATE_RELAY_QUIC_ENGINE", name)
    return name


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path / "pki", ["alice", "bob"])


def udp_port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def settings_for(tmp_path: Path, pki: Path, **values: object) -> RelaySettings:
    base: dict[str, object] = {
        "listen": f"127.0.0.1:{free_udp_port()}",
        "state_dir": tmp_path / "state",
        "pki": pki,
        "metrics": None,
        "dns": False,
        "audit_log": tmp_path / "audit.log",
        "policy_check_interval": 0,  # reloads only when the test asks (SIGHUP)
        "crl_check_interval": 3600,
        "relay_name": "relay-under-test",
    }
    base.update(values)
    return RelaySettings(**base)  # type: ignore[arg-type]


def audit_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


def audit_records(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def audit_events(path: Path) -> list[str]:
    return [record["event"] for record in audit_records(path)]


@contextlib.contextmanager
def no_leftovers(port: int) -> Iterator[None]:
    """Nothing run_relay started is left once it returns: threads, the UDP port."""
    threads = audit_threads()
    yield
    assert audit_threads() <= threads, "a thread run_relay started is still running"
    assert udp_port_is_free(port), f"UDP port {port} is still bound"


# ------------------------------------------------------------------------- start-up


@pytest.mark.parametrize(
    ("text", "why"),
    [(POLICY_INVALID, "perhaps"), (POLICY_FAILING_TEST, "udp://203.0.113.10:7")],
    ids=["invalid", "failing-inline-test"],
)
async def test_a_policy_that_cannot_be_used_stops_the_start(
    tmp_path: Path, pki: Path, text: str, why: str
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    settings = settings_for(tmp_path, pki, policy=policy)
    port = int(settings.listen.rpartition(":")[2])
    with no_leftovers(port), MemoryPacketDevice() as device, pytest.raises(StartupError) as refused:
        await asyncio.wait_for(run_relay(settings, egress_device=device), WAIT)
    message = str(refused.value)
    assert f"--policy {policy}" in message
    assert why in message
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # no handler left behind


async def test_no_policy_means_allow_all_with_a_warning(
    tmp_path: Path, pki: Path, logs: LogWatcher, engine: str
) -> None:
    async with (
        relay_app(settings_for(tmp_path, pki)) as running,
        app_agent(running, pki, "bob") as bob,
    ):
        [chosen] = [r for r in logs.records if r.getMessage() == "QUIC engine"]
        assert chosen.engine == engine  # type: ignore[attr-defined]
        warnings = [r for r in logs.records if r.levelno == logging.WARNING]
        assert any(
            "every authenticated client may reach everything" in r.getMessage() for r in warnings
        )
        # bob is in no rule of any policy: only allow-all lets him out, on any port.
        for port in (7, 443):
            packet = udp4(address4(bob), str(INTERNET), b"anything", dport=port)
            device_of(bob).inject(packet)
            assert await running.egress.received(timeout=WAIT) == packet


# -------------------------------------------------------------------------- SIGHUP


async def test_sighup_reloads_the_policy_and_reports_each_result(
    tmp_path: Path, pki: Path, logs: LogWatcher
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings = settings_for(tmp_path, pki, policy=policy)
    async with relay_app(settings) as running, app_agent(running, pki, "alice") as alice:
        src = address4(alice)
        to_port_7 = udp4(src, str(INTERNET), b"allowed", sport=40001)
        device_of(alice).inject(to_port_7)
        assert await running.egress.received(timeout=WAIT) == to_port_7

        os.kill(os.getpid(), signal.SIGHUP)
        await logs.wait_for("policy reloaded: unchanged")

        policy.write_text(POLICY_FAILING_TEST)
        os.kill(os.getpid(), signal.SIGHUP)
        await logs.wait_for("policy refused; keeping the running version")
        # The running version still decides: a new flow to udp/7 passes.
        again = udp4(src, str(INTERNET), b"still allowed", sport=40002)
        device_of(alice).inject(again)
        assert await running.egress.received(timeout=WAIT) == again

        policy.write_text(POLICY_PORT_9)
        os.kill(os.getpid(), signal.SIGHUP)
        await logs.wait_for("policy loaded", count=2)  # the start, then this one
        # The new version decides now: udp/7 is denied, answered with ICMP from the relay.
        denied = udp4(src, str(INTERNET), b"now denied", sport=40003)
        device_of(alice).inject(denied)
        answer = parse_packet(await device_of(alice).received(timeout=WAIT))
        assert answer.proto == 1  # ICMP (administratively prohibited)
        assert running.egress.drain() == []
    records = audit_records(settings.audit_log)
    assert [r["event"] for r in records if r["event"].startswith("policy.")] == [
        "policy.loaded",
        "policy.refused",
        "policy.loaded",
    ]
    # The two flows the new version no longer allows were ended by it, the third denied.
    ended = [r for r in records if r["event"] == "flow.end" and r["reason"] == "policy_revoked"]
    assert len(ended) == 2
    assert [r["event"] for r in records].count("flow.deny") == 1


async def test_sighup_reopens_the_audit_log(tmp_path: Path, pki: Path, logs: LogWatcher) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings = settings_for(tmp_path, pki, policy=policy)
    log_file = settings.audit_log
    assert log_file is not None
    rotated = tmp_path / "audit.log.1"
    async with relay_app(settings):
        await until(lambda: audit_events(log_file) == ["policy.loaded"], WAIT)
        log_file.rename(rotated)  # what logrotate does before it signals
        policy.write_text(POLICY_PORT_9)
        os.kill(os.getpid(), signal.SIGHUP)
        await logs.wait_for("policy loaded", count=2)
        await until(lambda: audit_events(log_file) == ["policy.loaded"], WAIT, "a new file")
    assert audit_events(rotated) == ["policy.loaded"]


async def test_sighup_rereads_the_crl_and_ends_a_revoked_clients_session(
    tmp_path: Path, pki: Path, logs: LogWatcher
) -> None:
    settings = settings_for(tmp_path, pki)  # the periodic CRL check is an hour away
    async with relay_app(settings) as running, app_agent(running, pki, "alice") as alice:
        assert alice.connected.is_set()
        revoke_certificate(pki, "alice")
        os.kill(os.getpid(), signal.SIGHUP)
        await logs.wait_for("session closed")
        assert logs.count("CA/CRL reloaded") == 1
        assert logs.count("certificate revoked: ending its sessions") == 1


async def test_periodic_crl_check_ends_a_revoked_clients_session(
    tmp_path: Path, pki: Path, logs: LogWatcher
) -> None:
    settings = settings_for(tmp_path, pki, crl_check_interval=0.2)
    async with relay_app(settings) as running, app_agent(running, pki, "alice") as alice:
        assert alice.connected.is_set()
        revoke_certificate(pki, "alice")
        await logs.wait_for("session closed")
        assert logs.count("SIGHUP") == 0
        assert logs.count("certificate revoked: ending its sessions") == 1


# ------------------------------------------------------------------------- SIGTERM


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_sigterm_ends_run_relay_cleanly(
    tmp_path: Path, pki: Path, logs: LogWatcher, sig: signal.Signals
) -> None:
    settings = settings_for(tmp_path, pki)
    port = int(settings.listen.rpartition(":")[2])
    with no_leftovers(port):
        async with relay_app(settings) as running:
            assert not udp_port_is_free(port)
            os.kill(os.getpid(), sig)
            await asyncio.wait_for(running.task, WAIT)  # returns, raises nothing
    assert logs.count("relay stopping") == 1
    for handled in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        assert signal.getsignal(handled) is not None
        loop = asyncio.get_running_loop()
        assert not loop.remove_signal_handler(handled)  # run_relay removed its own

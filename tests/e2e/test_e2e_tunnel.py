"""The tunnel end to end: real TUN devices, real nftables NAT, real ping/curl, in namespaces."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import pytest

from zgate_lab.lab import (
    HTTP_PORT,
    INET_IP,
    INET_IP6,
    UDP_ECHO_PORT,
    Lab,
    metric_value,
    wait_until,
)
from zgate_proto.engines import DEFAULT_ENGINE

UDP_CLIENT = ["-m", "zgate_lab.lab_udp", "client"]


def ping_loss(lab: Lab, n: int, dest: str, count: int = 20, *extra: str) -> float:
    """Packet loss (%) of `ping -c count` from agent n's namespace."""
    proc = lab.ns(
        lab.agent_ns(n),
        "ping",
        "-c",
        str(count),
        "-i",
        "0.05",
        "-W",
        "2",
        *extra,
        dest,
        check=False,
        timeout=60,
    )
    if "Network is unreachable" in proc.stderr:
        return 100.0
    match = re.search(r"([\d.]+)% packet loss", proc.stdout)
    assert match, f"ping printed no summary:\n{proc.stdout}\n{proc.stderr}"
    return float(match.group(1))


@pytest.fixture(scope="module")
def agent1(lab: Lab):  # type: ignore[no-untyped-def]
    agent = lab.start_agent(1, mode="datagram")
    yield agent
    agent.stop()


@pytest.mark.parametrize("mode", ["datagram", "stream"])
def test_ping_through_the_tunnel_in_both_modes(lab: Lab, mode: str) -> None:
    agent = lab.start_agent(3, mode=mode)
    try:
        status = lab.agent_status(3)
        assert status is not None and status["mode"] == mode
        # `make e2e QUIC_ENGINE=...` must really run both ends on that engine.
        wanted = os.environ.get("ZGATE_AGENT_QUIC_ENGINE", DEFAULT_ENGINE)
        assert status["quic_engine"] == wanted
        said = [r for r in lab.relay.json_log() if r.get("msg") == "QUIC engine"]  # type: ignore[attr-defined]
        assert said and said[-1]["engine"] == os.environ.get(
            "ZGATE_RELAY_QUIC_ENGINE", DEFAULT_ENGINE
        )
        before = lab.relay_metric("zgate_relay_packets_total", direction="to_egress")
        assert ping_loss(lab, 3, INET_IP) == 0.0
        after = lab.relay_metric("zgate_relay_packets_total", direction="to_egress")
        assert after - before >= 20, "the pings did not cross the relay's egress"
    finally:
        assert agent.stop() == 0
    # The agent removed its device and routes on exit.
    links = lab.ns(lab.agent_ns(3), "ip", "-o", "link").stdout
    assert "ztun0" not in links
    assert "0.0.0.0/1" not in lab.ns(lab.agent_ns(3), "ip", "route").stdout


def test_without_an_agent_the_leak_path_reaches_the_internet(lab: Lab) -> None:
    """The lab gives agent namespaces a default route around the tunnel (their WAN), and
    counts what crosses it: the leak checks below rely on both."""
    before = lab.leaked_packets(2)
    assert ping_loss(lab, 2, INET_IP, 3) == 0.0
    assert lab.leaked_packets(2) - before >= 3


def test_http_download_of_20_mb_is_intact(lab: Lab, agent1: object) -> None:
    blob: Path = lab.blob  # type: ignore[attr-defined]
    out = lab.workdir / "download.bin"
    proc = lab.ns(
        lab.agent_ns(1),
        "curl",
        "-sS",
        "--max-time",
        "120",
        "-o",
        str(out),
        f"http://{INET_IP}:{HTTP_PORT}/blob.bin",
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size == blob.stat().st_size
    assert (
        hashlib.sha256(out.read_bytes()).hexdigest()
        == hashlib.sha256(blob.read_bytes()).hexdigest()
    )


def test_udp_request_response(lab: Lab, agent1: object) -> None:
    proc = lab.ns(lab.agent_ns(1), sys.executable, *UDP_CLIENT, INET_IP, str(UDP_ECHO_PORT), "50")
    result = json.loads(proc.stdout)
    assert result == {"sent": 50, "echoed": 50}


def test_ipv6_through_the_tunnel(lab: Lab, agent1: object) -> None:
    status = lab.agent_status(1)
    assert status is not None
    addresses = status["addresses"]
    assert isinstance(addresses, list)
    assert any(":" in a for a in addresses), status
    assert ping_loss(lab, 1, INET_IP6, 10) == 0.0
    proc = lab.ns(
        lab.agent_ns(1),
        "curl",
        "-sS",
        "-g",
        "--max-time",
        "30",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        f"http://[{INET_IP6}]:{HTTP_PORT}/blob.bin",
        timeout=60,
    )
    assert proc.stdout == "200"
    proc = lab.ns(lab.agent_ns(1), sys.executable, *UDP_CLIENT, INET_IP6, str(UDP_ECHO_PORT), "10")
    assert json.loads(proc.stdout)["echoed"] == 10


def test_two_agents_reach_each_other_only_through_the_relay(lab: Lab, agent1: object) -> None:
    agent2 = lab.start_agent(2, mode="stream")
    try:
        s1, s2 = lab.agent_status(1), lab.agent_status(2)
        assert s1 is not None and s2 is not None
        addresses1, addresses2 = s1["addresses"], s2["addresses"]
        assert isinstance(addresses1, list) and isinstance(addresses2, list)
        a1 = next(a for a in addresses1 if "." in a).split("/")[0]
        a2 = next(a for a in addresses2 if "." in a).split("/")[0]
        assert a1 != a2
        before = lab.relay_metric("zgate_relay_packets_total", direction="to_agent")
        loss = ping_loss(lab, 1, a2, 10)
        if loss:  # say as much as possible about where the packets went
            metrics = lab.ns(lab.agent_ns(2), "curl", "-s", "http://127.0.0.1:9102/metrics")
            routes = lab.ns(lab.agent_ns(2), "ip", "route").stdout
            pytest.fail(
                f"loss {loss}% agent1->agent2\nagent2 routes:\n{routes}\n"
                f"agent2 metrics:\n{metrics.stdout}\nrelay:\n{lab.relay_metrics_text()}"
            )
        after = lab.relay_metric("zgate_relay_packets_total", direction="to_agent")
        assert after - before >= 20, "agent-to-agent pings did not go through the relay"
        # A spoofed source from agent 1 is dropped by the relay (BCP 38).
        spoofed_before = lab.relay_metric("zgate_relay_drops_total", reason="spoofed_source")
        lab.ns(lab.agent_ns(1), "ip", "addr", "add", "10.100.250.250/32", "dev", "ztun0")
        try:
            assert ping_loss(lab, 1, INET_IP, 5, "-I", "10.100.250.250") == 100.0
        finally:
            lab.ns(lab.agent_ns(1), "ip", "addr", "del", "10.100.250.250/32", "dev", "ztun0")
        wait_until(
            lambda: (
                lab.relay_metric("zgate_relay_drops_total", reason="spoofed_source")
                >= spoofed_before + 5
            ),
            5,
            "the spoofed packets to be counted",
        )
    finally:
        agent2.stop()


def test_nothing_leaks_while_the_relay_is_down(lab: Lab) -> None:
    """The relay stops; the agent keeps its TUN device and routes, so its host's traffic is
    dropped and counted by the agent, and none of it takes the WAN around the tunnel."""
    agent = lab.start_agent(3)
    relay = lab.relay  # type: ignore[attr-defined]
    try:
        assert relay.stop() == 0
        wait_until(
            lambda: (lab.agent_status(3) or {}).get("state") != "connected",
            20,
            "the agent to notice the relay is gone",
        )
        leaked = lab.leaked_packets(3)
        dropped = metric_value(
            lab.agent_metrics_text(3), "zgate_agent_drops_total", reason="not_connected"
        )
        loss = ping_loss(lab, 3, INET_IP, 5)
        udp = lab.ns(lab.agent_ns(3), sys.executable, *UDP_CLIENT, INET_IP, str(UDP_ECHO_PORT), "3")
        http = lab.ns(
            lab.agent_ns(3),
            "curl",
            "-s",
            "--max-time",
            "3",
            f"http://{INET_IP}:{HTTP_PORT}/",
            check=False,
        )
        if lab.leaked_packets(3) != leaked:
            routes = lab.ns(lab.agent_ns(3), "ip", "route", check=False).stdout
            pytest.fail(
                f"{lab.leaked_packets(3) - leaked} packets went around the tunnel\n"
                f"agent3 alive: {agent.proc.poll() is None}, status {lab.agent_status(3)}\n"
                f"routes:\n{routes}\nlog:\n{agent.log()[-3000:]}"
            )
        assert loss == 100.0
        assert json.loads(udp.stdout)["echoed"] == 0
        assert http.returncode != 0
        # They went into the tunnel's device instead, and the agent dropped them.
        wait_until(
            lambda: (
                metric_value(
                    lab.agent_metrics_text(3), "zgate_agent_drops_total", reason="not_connected"
                )
                >= dropped + 10
            ),
            5,
            "the agent to count the dropped packets",
        )
    finally:
        agent.stop()
        if relay.proc.poll() is not None:
            lab.relay = lab.start_relay()  # type: ignore[attr-defined]

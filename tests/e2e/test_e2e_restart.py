"""The relay goes away and comes back: the agent restores the tunnel by itself, and the
relay removes everything it set up on the host when it stops."""

from __future__ import annotations

from zgate_cli.lab import INET_IP, Lab, wait_until


def test_agent_reconnects_after_relay_restart(lab: Lab) -> None:
    agent = lab.start_agent(1, mode="datagram")
    try:
        first = lab.agent_status(1)
        assert first is not None and first["state"] == "connected"
        relay = lab.relay  # type: ignore[attr-defined]
        assert relay.stop() == 0
        # Clean shutdown: no TUN device, no nftables table left behind.
        assert "zgate0" not in lab.ns(lab.relay_ns, "ip", "-o", "link").stdout
        assert "zgate_relay" not in lab.ns(lab.relay_ns, "nft", "list", "tables").stdout
        wait_until(
            lambda: (lab.agent_status(1) or {}).get("state") != "connected",
            40,
            "the agent to notice the relay is gone",
        )
        # While the relay is down, nothing leaks around the tunnel.
        proc = lab.ns(lab.agent_ns(1), "ping", "-c", "2", "-W", "1", INET_IP, check=False)
        assert " 100% packet loss" in proc.stdout or proc.returncode != 0
        lab.relay = lab.start_relay()  # type: ignore[attr-defined]
        status = lab.wait_agent_connected(1, agent, timeout=40)
        assert int(status["attempts"]) > 1  # type: ignore[call-overload]
        proc = lab.ns(
            lab.agent_ns(1), "ping", "-c", "10", "-i", "0.05", "-W", "2", INET_IP, check=False
        )
        assert " 0% packet loss" in proc.stdout, proc.stdout
    finally:
        agent.stop()


def test_stale_nat_table_from_a_crash_is_replaced(lab: Lab) -> None:
    relay = lab.relay  # type: ignore[attr-defined]
    relay.stop(sig=9)  # a crash: nothing cleaned up
    assert "zgate_relay" in lab.ns(lab.relay_ns, "nft", "list", "tables").stdout
    lab.ns(lab.relay_ns, "ip", "link", "del", "zgate0", check=False)
    lab.relay = lab.start_relay()  # type: ignore[attr-defined]
    ruleset = lab.ns(lab.relay_ns, "nft", "list", "table", "inet", "zgate_relay").stdout
    assert ruleset.count("masquerade") >= 1
    agent = lab.start_agent(2)
    try:
        proc = lab.ns(
            lab.agent_ns(2), "ping", "-c", "5", "-i", "0.05", "-W", "2", INET_IP, check=False
        )
        assert " 0% packet loss" in proc.stdout, proc.stdout
    finally:
        agent.stop()

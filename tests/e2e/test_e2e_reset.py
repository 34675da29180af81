"""A relay that crashed and restarted tells a running agent at once that its connection is
gone (a stateless reset, RFC 9000 §10.3, with the token derived from the reset key the relay
keeps across restarts): pings resume within 3 s of the relay listening again (issue 14 item
3) even with the agent's liveness deadline off and a 30 s idle timeout, where without the
reset the agent would wait for the idle timeout (test_e2e_restart.py's crash test)."""

from __future__ import annotations

import re
import signal
import time

import pytest

from zgate_lab.lab import INET_IP, Daemon, Lab, metric_value

#: The issue's goal: pings resume within this many seconds of the relay listening again.
RESUME = 3.0


def test_a_restarted_relay_resets_the_agents_connection_and_pings_resume_at_once(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZGATE_AGENT_LIVENESS", "0")  # only the reset can tell it
    # The agent on qh3 whatever engine the run gives the services (`make e2e
    # QUIC_ENGINE=aioquic` runs the relay on aioquic): aioquic 1.7.2's client keeps the
    # relay's reset tokens but never checks a datagram against them, so an aioquic agent
    # ignores every stateless reset and would wait for its idle timeout (docs/relay.md).
    monkeypatch.setenv("ZGATE_AGENT_QUIC_ENGINE", "qh3")
    agent = lab.start_agent(1)
    try:
        relay: Daemon = lab.relay  # type: ignore[attr-defined]
        relay.stop(sig=signal.SIGKILL)
        lab.ns(lab.relay_ns, "ip", "link", "del", "zgate0", check=False)
        lab.relay = lab.start_relay()  # type: ignore[attr-defined]  # the same reset key file
        listening = time.time()
        # One ping every 50 ms, each line stamped (-D): the first answer after the restart.
        proc = lab.ns(
            lab.agent_ns(1),
            "ping", "-D", "-n", "-c", "120", "-i", "0.05", "-W", "1", INET_IP,
            check=False,
            timeout=30,
        )  # fmt: skip
        answered = [float(t) for t in re.findall(r"^\[([\d.]+)\].*time=", proc.stdout, re.M)]
        assert answered, proc.stdout
        resumed = answered[0] - listening
        resets = metric_value(
            lab.relay_metrics_text(), "zgate_relay_front_door_total", outcome="stateless_reset"
        )
        print(f"pings resumed {resumed:.2f}s after the relay listened again; {resets:.0f} resets")
        assert resets >= 1
        assert resumed <= RESUME, proc.stdout
        assert agent.proc.poll() is None
    finally:
        agent.stop()

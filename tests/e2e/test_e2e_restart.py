"""The relay goes away and comes back: a running agent notices as soon as the docs say it
does, restores the tunnel by itself, and the relay removes everything it set up on the
host when it stops (docs/FAQ.md, "What happens to agents when the relay restarts or
crashes?")."""

from __future__ import annotations

import signal
import time
from datetime import datetime

import pytest

from zgate_lab.lab import INET_IP, Daemon, Lab, metric_value, wait_until

#: A clean stop (SIGTERM) sends CONNECTION_CLOSE: the agent's /status leaves "connected"
#: within this many seconds of the signal (measured: 0.01-0.06 s by
#: polling, 0.00-0.01 s by the agent's log, on the loaded 2-core VM).
NOTICE_CLOSE = 3.0
#: Once the relay listens again, a running agent is up within this many seconds: its
#: current backoff (the lab caps it at 2 s) or the next retransmission of an attempt's
#: Initial packet, whichever comes first (measured: 0.1-4.4 s).
RECONNECT = 10.0
#: The crash test's agent: QUIC idle timeout and keepalive shortened from 30 s / 10 s, so
#: that the test stays short (ZGATE_AGENT_IDLE_TIMEOUT, ZGATE_AGENT_KEEPALIVE).
IDLE = 5.0
KEEPALIVE = 1.0


def state(lab: Lab, n: int) -> str | None:
    status = lab.agent_status(n)
    return None if status is None else str(status["state"])


def log_time(daemon: Daemon, message: str, after: float) -> float | None:
    """When ``daemon`` first logged ``message`` (its JSON ``ts``) at or after ``after``."""
    for record in daemon.json_log():
        if record.get("msg") != message:
            continue
        at = datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00")).timestamp()
        if at >= after - 0.001:  # ts has millisecond resolution
            return at
    return None


def attempts(lab: Lab, n: int) -> int:
    """Agent n's connection attempts so far (0 while its /status does not answer)."""
    status = lab.agent_status(n)
    return 0 if status is None else int(str(status["attempts"]))


def last_error(lab: Lab, n: int) -> object:
    status = lab.agent_status(n)
    return None if status is None else status["last_error"]


def not_connected_drops(lab: Lab, n: int) -> float:
    return metric_value(
        lab.agent_metrics_text(n), "zgate_agent_drops_total", reason="not_connected"
    )


def ping_through(lab: Lab, n: int) -> None:
    proc = lab.ns(
        lab.agent_ns(n), "ping", "-c", "10", "-i", "0.05", "-W", "2", INET_IP, check=False
    )
    assert " 0% packet loss" in proc.stdout, proc.stdout


def test_clean_restart_is_noticed_at_once_and_the_agent_comes_back(lab: Lab) -> None:
    agent = lab.start_agent(1, mode="datagram")
    try:
        assert state(lab, 1) == "connected"
        before = attempts(lab, 1)
        relay: Daemon = lab.relay  # type: ignore[attr-defined]
        signalled_wall, signalled = time.time(), time.monotonic()
        relay.proc.send_signal(signal.SIGTERM)
        wait_until(
            lambda: state(lab, 1) != "connected",
            NOTICE_CLOSE,
            "the agent to notice the relay's CONNECTION_CLOSE",
        )
        noticed = time.monotonic() - signalled
        status = lab.agent_status(1)
        assert status is not None
        # The relay's close, not a timeout, is what the agent saw.
        assert status["last_error"] == "tunnel lost: relay shutting down", status
        assert relay.proc.wait(timeout=15) == 0
        # Clean shutdown: no TUN device, no nftables table left behind.
        assert "zgate0" not in lab.ns(lab.relay_ns, "ip", "-o", "link").stdout
        assert "zgate_relay" not in lab.ns(lab.relay_ns, "nft", "list", "tables").stdout
        # While the relay is down the agent keeps its routes: packets go into the TUN
        # device and are dropped there, counted, not sent around the tunnel.
        # (The lab gives the agent a default route around the tunnel, whose arrivals at the
        # internet host are counted: a leak would get through and be seen.)
        dropped, leaked = not_connected_drops(lab, 1), lab.leaked_packets(1)
        proc = lab.ns(lab.agent_ns(1), "ping", "-c", "2", "-W", "1", INET_IP, check=False)
        assert " 100% packet loss" in proc.stdout, proc.stdout
        assert not_connected_drops(lab, 1) - dropped >= 2
        assert lab.leaked_packets(1) == leaked, "packets went around the tunnel"
        lab.relay = relay = lab.start_relay()  # type: ignore[attr-defined]
        listening = time.monotonic()
        lab.wait_agent_connected(1, agent, timeout=RECONNECT)
        back = time.monotonic() - listening
        assert attempts(lab, 1) > before
        assert agent.proc.poll() is None
        ping_through(lab, 1)
        # The same measures from the daemons' own log timestamps (the status polls above
        # add up to a curl's time).
        down = log_time(agent, "tunnel down: tunnel lost: relay shutting down", signalled_wall)
        assert down is not None and down - signalled_wall < NOTICE_CLOSE, agent.log()
        up_again = log_time(agent, "tunnel up", signalled_wall)
        relay_up = log_time(relay, "relay listening", signalled_wall)
        print(
            f"clean restart: status left 'connected' {noticed:.2f}s after SIGTERM"
            + f" (logged {down - signalled_wall:.2f}s after)"
            + f"; connected "
            f"again {back:.2f}s after the relay's metrics answered"
            + (
                f" ({up_again - relay_up:.2f}s after 'relay listening' by the logs)"
                if up_again and relay_up
                else ""
            )
        )
    finally:
        agent.stop()


def test_a_crash_is_noticed_at_the_idle_timeout_and_the_running_agent_comes_back(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZGATE_AGENT_IDLE_TIMEOUT", str(IDLE))
    monkeypatch.setenv("ZGATE_AGENT_KEEPALIVE", str(KEEPALIVE))
    # Liveness off: this is the idle-timeout path (test_e2e_recovery.py has the default).
    monkeypatch.setenv("ZGATE_AGENT_LIVENESS", "0")
    agent = lab.start_agent(2)
    try:
        before = attempts(lab, 2)
        assert before >= 1 and last_error(lab, 2) is None
        relay: Daemon = lab.relay  # type: ignore[attr-defined]
        killed_wall, killed = time.time(), time.monotonic()
        relay.stop(sig=signal.SIGKILL)  # a crash: nothing cleaned up, no CONNECTION_CLOSE
        assert "zgate_relay" in lab.ns(lab.relay_ns, "nft", "list", "tables").stdout
        lab.ns(lab.relay_ns, "ip", "link", "del", "zgate0", check=False)
        # Without its stateless reset key (--reset-key off) the restarted relay cannot tell
        # the agent that the connection is gone: the idle-timeout path this test is about
        # (with the key, test_e2e_reset.py: the agent learns it at its next packet).
        lab.relay = lab.start_relay("--reset-key", "off")  # type: ignore[attr-defined]
        restarted = time.monotonic() - killed
        # On start the relay replaced the stale nftables table.
        ruleset = lab.ns(lab.relay_ns, "nft", "list", "table", "inet", "zgate_relay").stdout
        assert ruleset.count("masquerade") >= 1
        # The new relay does not know the old connection and says nothing about it: the
        # agent goes on believing it is connected until its idle timeout runs out. (Its
        # last error, not its state, is awaited: down and up again can fall between two
        # polls of /status.)
        latest = IDLE + KEEPALIVE + 3
        wait_until(
            lambda: last_error(lab, 2) is not None,
            latest,  # bounded from the crash below, by the agent's own log
            "the agent's idle timeout",
        )
        status = lab.agent_status(2)
        assert status is not None
        assert status["last_error"] == "tunnel lost: Idle timeout", status
        down = log_time(agent, "tunnel down: tunnel lost: Idle timeout", killed_wall)
        assert down is not None, agent.log()
        noticed = down - killed_wall
        # Not before the idle timeout has run from the last packet the relay answered (a
        # keepalive at most KEEPALIVE before the crash), nor long after it ran from the
        # first keepalive that went unanswered.
        assert IDLE - KEEPALIVE <= noticed <= latest, noticed
        assert agent.proc.poll() is None  # the same agent, not a restarted one
        lab.wait_agent_connected(2, agent, timeout=RECONNECT)
        assert attempts(lab, 2) > before
        up = log_time(agent, "tunnel up", down)
        assert up is not None, agent.log()
        ping_through(lab, 2)
        print(
            f"crash: relay back {restarted:.2f}s after SIGKILL; agent noticed {noticed:.2f}s "
            f"after SIGKILL (idle timeout {IDLE}s, keepalive {KEEPALIVE}s); connected again "
            f"{up - down:.2f}s after it noticed"
        )
    finally:
        agent.stop()

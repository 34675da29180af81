"""Who may not connect, and what bad input does: refusals, revocation, malformed capsules."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from zgate_lab.lab import INET_IP, RELAY_LAN_IP, VENV_BIN, Lab, run, wait_until

PROBE = str(Path(__file__).parent / "probe.py")
GARBAGE = 50
"""Datagrams of each kind the probe sends with --what garbage-datagrams (probe.GARBAGE)."""


def probe(lab: Lab, n: int, *args: str) -> dict[str, object]:
    proc = lab.ns(
        lab.agent_ns(n),
        sys.executable,
        PROBE,
        *args,
        "--relay",
        f"{RELAY_LAN_IP}:4433",
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def refusal_logged(lab: Lab, reason: str) -> bool:
    relay = lab.relay  # type: ignore[attr-defined]
    return any(
        r.get("msg") == "handshake refused" and r.get("reason") == reason for r in relay.json_log()
    )


def client_files(lab: Lab, pki: Path, name: str) -> list[str]:
    return [
        "--ca",
        str(lab.pki / "ca.pem"),
        "--cert",
        str(pki / "clients" / f"{name}.pem"),
        "--key",
        str(pki / "clients" / f"{name}.key"),
    ]


def test_a_valid_client_gets_a_session(lab: Lab) -> None:
    result = probe(lab, 1, "handshake", *client_files(lab, lab.pki, "agent1"))
    assert result["connected"] is True, result


def other_ca_client(lab: Lab) -> list[str]:
    """A client certificate for "agent1" from a CA the relay does not trust."""
    other = lab.workdir / "other-pki"
    if not (other / "ca.pem").exists():
        zgate = str(VENV_BIN / "zgate")
        run([zgate, "pki", "init", "--dir", str(other)])
        run([zgate, "pki", "issue", "client", "agent1", "--dir", str(other)])
    return client_files(lab, other, "agent1")


# (refusal reason, TLS alert the client receives, how the probe presents itself)
REFUSALS = [
    ("no_certificate", 116, lambda lab: ["--ca", str(lab.pki / "ca.pem")]),  # cert required
    ("unknown_ca", 48, other_ca_client),
    ("tls_version", 70, lambda lab: ["--tls12", *client_files(lab, lab.pki, "agent1")]),
]


@pytest.mark.parametrize(("reason", "alert", "credentials"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_handshake_is_refused_logged_and_counted(
    lab: Lab, reason: str, alert: int, credentials: Callable[[Lab], list[str]]
) -> None:
    metric = "zgate_relay_handshake_refusals_total"
    before = lab.relay_metric(metric, reason=reason)
    result = probe(lab, 1, "handshake", *credentials(lab))
    assert result["connected"] is False
    assert result["error_code"] == 0x100 + alert, result  # QUIC CRYPTO_ERROR for the alert
    wait_until(lambda: lab.relay_metric(metric, reason=reason) == before + 1, 5, "the metric")
    assert refusal_logged(lab, reason)


@pytest.mark.parametrize("what", ["garbage-datagrams", "truncated-capsule", "oversized-capsule"])
def test_malformed_input_on_a_live_session_harms_no_one_else(lab: Lab, what: str) -> None:
    agent = lab.start_agent(1)
    try:
        errors_before = lab.relay_metric("zgate_relay_session_errors_total")
        reasons = ("unknown_context", "unknown_stream")
        drops_before = {r: lab.relay_metric("zgate_relay_drops_total", reason=r) for r in reasons}
        result = probe(lab, 2, "malformed", "--what", what, *client_files(lab, lab.pki, "agent2"))
        if what == "garbage-datagrams":
            # Dropped and counted, each under its own reason; the session itself stays up.
            assert result["session_alive"] is True, result

            def counted() -> bool:
                return all(
                    lab.relay_metric("zgate_relay_drops_total", reason=r)
                    == drops_before[r] + GARBAGE
                    for r in reasons
                )

            wait_until(counted, 5, f"{GARBAGE} drops counted as each of {reasons}")
        else:
            assert result["session_alive"] is False, result
            assert re.search(r"reset|ended", str(result["reason"])), result
            wait_until(
                lambda: lab.relay_metric("zgate_relay_session_errors_total") == errors_before + 1,
                5,
                "the session error to be counted",
            )
        # The relay and the other session keep working.
        proc = lab.ns(
            lab.agent_ns(1), "ping", "-c", "5", "-i", "0.05", "-W", "2", INET_IP, check=False
        )
        assert " 0% packet loss" in proc.stdout, proc.stdout
        assert lab.relay.proc.poll() is None  # type: ignore[attr-defined]
    finally:
        agent.stop()


def test_revoked_while_connected_ends_the_session(lab: Lab) -> None:
    victim = lab.start_agent(3, client="victim")
    try:
        run([str(VENV_BIN / "zgate"), "pki", "revoke", "victim", "--dir", str(lab.pki)])
        wait_until(
            lambda: (lab.agent_status(3) or {}).get("state") != "connected",
            15,
            "the revoked agent's session to end",
        )
        relay = lab.relay  # type: ignore[attr-defined]
        wait_until(
            lambda: any(
                r.get("msg") == "certificate revoked: ending its sessions"
                and r.get("client") == "client/victim"
                for r in relay.json_log()
            ),
            5,
            "the revocation to be logged",
        )
        # It stays out: its reconnection attempts are refused as revoked.
        wait_until(lambda: refusal_logged(lab, "revoked"), 15, "a refused reconnection")
        assert lab.relay_metric("zgate_relay_handshake_refusals_total", reason="revoked") >= 2
        assert (lab.agent_status(3) or {}).get("state") != "connected"
    finally:
        victim.stop()

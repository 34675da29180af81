"""Access control end to end: a policy file on a real relay, agents in namespaces, the
relay's DNS service, hot reload and the audit log."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zgate_lab.lab import (
    HTTP_PORT,
    INET_IP,
    INET_IP_OTHER,
    UDP_ECHO_PORT,
    VENV_BIN,
    Lab,
    run,
    wait_until,
)

POLICY = """\
default: deny
groups:
  eng: [agent1]
  ops: ["group:eng"]            # nested: agent1 is in ops through eng
resources:
  web:
    - cidr: 203.0.113.10/32
      ports: [tcp/8000-8100, icmp]
  named:
    - fqdn: "www.example.test"
rules:
  - id: block-other
    action: deny
    from: ["*"]
    to: [203.0.113.20/32]
  - id: ops-web
    action: allow
    from: ["group:ops"]
    to: [web]
  - id: named-web
    action: allow
    from: [agent2, mallory]
    to: [named]
    ports: [tcp/8080]
  - id: agent2-other-ports
    action: allow
    from: [agent2]
    to: [203.0.113.10/32]
    ports: [tcp/9999, udp/7007]
tests:
  - {from: agent1, to: "tcp://203.0.113.10:8080", expect: allow}
  - {from: agent1, to: "udp://203.0.113.10:7007", expect: deny}
  - {from: agent2, to: "tcp://203.0.113.10:8080", expect: deny}
  - {from: agent2, to: "tcp://www.example.test:8080", expect: allow}
  - {from: agent2, to: "tcp://203.0.113.10:9999", expect: allow}
  - {from: agent1, to: "tcp://203.0.113.10:9999", expect: deny}
"""
OTHER_PORT = 9999
"""A second web server on the internet host, outside agent1's port range but agent2's."""

# The same without ops-web: agent1 loses the web server.
POLICY_WITHOUT_OPS = POLICY.replace(
    """  - id: ops-web
    action: allow
    from: ["group:ops"]
    to: [web]
""",
    "",
).replace(
    '  - {from: agent1, to: "tcp://203.0.113.10:8080", expect: allow}\n',
    '  - {from: agent1, to: "tcp://203.0.113.10:8080", expect: deny}\n',
)


def policy_version(path: Path) -> str:
    out = run([str(VENV_BIN / "zgate"), "policy", "check", str(path)]).stdout
    return out.rsplit("version ", 1)[1].strip()


@pytest.fixture(scope="module")
def plab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A lab whose relay runs the policy above."""
    import os

    tmp = tmp_path_factory.mktemp("plab")
    the_lab = Lab(tag=f"p{os.getpid() % 10000}", workdir=tmp, leak_path=True)
    try:
        the_lab.build(agents=3)
        the_lab.make_pki(clients=("agent1", "agent2", "mallory"))
        zgate = str(VENV_BIN / "zgate")
        run(
            [zgate, "pki", "issue", "client", "agent3", "--group", "ops", "--dir", str(the_lab.pki)]
        )
        the_lab.blob = the_lab.start_inet_services()  # type: ignore[attr-defined]
        the_lab.start_http_server("http-other", the_lab.inet_ns, OTHER_PORT, tmp / "www")
        policy = tmp / "policy.yaml"
        policy.write_text(POLICY)
        the_lab.policy = policy  # type: ignore[attr-defined]
        the_lab.relay = the_lab.start_relay("--policy", str(policy))  # type: ignore[attr-defined]
        yield the_lab
    finally:
        the_lab.teardown()


@pytest.fixture(scope="module")
def agent1(plab: Lab) -> Iterator[object]:
    agent = plab.start_agent(1)
    yield agent
    agent.stop()


def curl(lab: Lab, n: int, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return lab.ns(
        lab.agent_ns(n),
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
        *extra,
        url,
        check=False,
        timeout=30,
    )


def audit_record(
    lab: Lab, match: Callable[[dict[str, object]], bool], what: str, since: int = 0
) -> dict[str, object]:
    """The newest audit record that matches, among those from the ``since``-th on."""
    found: list[dict[str, object]] = []

    def seen() -> bool:
        found[:] = [r for r in lab.audit_records()[since:] if match(r)]
        return bool(found)

    wait_until(seen, 10, what)
    return found[-1]


def test_allow_by_cidr_and_port_range_with_a_nested_group(plab: Lab, agent1: object) -> None:
    proc = curl(plab, 1, f"http://{INET_IP}:{HTTP_PORT}/")
    assert proc.stdout == "200", proc.stderr
    record = audit_record(
        plab,
        lambda r: (
            r["event"] == "flow.allow"
            and r["client"] == "client/agent1"
            and r["dport"] == HTTP_PORT
        ),
        "the flow.allow record",
    )
    assert record["proto"] == "tcp"
    assert record["dst"] == INET_IP
    assert record["rule"] == "ops-web"
    assert record["verdict"] == "allow"
    assert record["policy_version"] == policy_version(plab.policy)  # type: ignore[attr-defined]
    assert isinstance(record["src"], str) and record["src"].startswith("10.100.")
    assert isinstance(record["session"], str) and record["session"]


def udp_echoes(lab: Lab, n: int) -> dict[str, int]:
    """Three requests from agent n to the internet host's UDP echo server."""
    proc = lab.ns(
        lab.agent_ns(n),
        sys.executable,
        "-m",
        "zgate_lab.lab_udp",
        "client",
        INET_IP,
        str(UDP_ECHO_PORT),
        "3",
    )
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_deny_by_protocol_and_by_port(plab: Lab, agent1: object) -> None:
    """agent1 may reach the web server's TCP 8000-8100 and ICMP only: UDP to the echo server
    and TCP to the second web server are denied. agent2, whom a rule allows both, gets
    through on the same ports: what agent1 meets is the policy, not a missing listener."""
    other = f"http://{INET_IP}:{OTHER_PORT}/"
    agent2 = plab.start_agent(2)
    try:
        assert udp_echoes(plab, 2) == {"sent": 3, "echoed": 3}
        assert curl(plab, 2, other).stdout == "200"
    finally:
        agent2.stop()
    denials = plab.relay_metric("zgate_policy_decisions_total", rule="default", verdict="deny")
    # UDP to the same host: the web resource is TCP 8000-8100 and ICMP only.
    assert udp_echoes(plab, 1) == {"sent": 3, "echoed": 0}
    record = audit_record(
        plab,
        lambda r: (
            r["event"] == "flow.deny"
            and r["client"] == "client/agent1"
            and r["proto"] == "udp"
            and r["dport"] == UDP_ECHO_PORT
        ),
        "the flow.deny record",
    )
    assert record["rule"] == "default"
    # TCP outside the port range is denied too.
    assert curl(plab, 1, other).stdout != "200"
    record = audit_record(
        plab,
        lambda r: (
            r["event"] == "flow.deny"
            and r["client"] == "client/agent1"
            and r["proto"] == "tcp"
            and r["dport"] == OTHER_PORT
        ),
        "the flow.deny record of TCP 9999",
    )
    assert record["rule"] == "default"
    wait_until(
        lambda: (
            plab.relay_metric("zgate_policy_decisions_total", rule="default", verdict="deny")
            >= denials + 2
        ),
        5,
        "the denials counted",
    )


def test_denied_flow_gets_icmp_administratively_prohibited(plab: Lab, agent1: object) -> None:
    proc = plab.ns(plab.agent_ns(1), "ping", "-c", "2", "-W", "2", INET_IP_OTHER, check=False)
    assert "Packet filtered" in proc.stdout, proc.stdout  # ICMP type 3 code 13
    record = audit_record(
        plab,
        lambda r: r["event"] == "flow.deny" and r["dst"] == INET_IP_OTHER,
        "the flow.deny record",
    )
    assert record["rule"] == "block-other"
    assert record["proto"] == "icmp"
    # Allowed ICMP to the other address still works (icmp is in the web resource).
    ok = plab.ns(plab.agent_ns(1), "ping", "-c", "2", "-W", "2", INET_IP, check=False)
    assert " 0% packet loss" in ok.stdout


def test_group_from_the_certificate_and_a_client_without_rights(plab: Lab) -> None:
    agent3 = plab.start_agent(3, client="agent3")  # certificate group ops
    try:
        assert curl(plab, 3, f"http://{INET_IP}:{HTTP_PORT}/").stdout == "200"
    finally:
        agent3.stop()
    agent2 = plab.start_agent(2)
    try:
        proc = curl(plab, 2, f"http://{INET_IP}:{HTTP_PORT}/")
        assert proc.stdout != "200"
        assert proc.returncode != 0
    finally:
        agent2.stop()


def test_fqdn_rule_matches_what_the_client_resolved_through_the_relay(plab: Lab) -> None:
    agent2 = plab.start_agent(2)
    try:
        url = f"http://{INET_IP}:{HTTP_PORT}/"
        # Before any DNS answer, the address is just an address: denied.
        assert curl(plab, 2, url).stdout != "200"
        proc = plab.ns(
            plab.agent_ns(2),
            sys.executable,
            "-m",
            "zgate_lab.lab_dns",
            "query",
            "10.100.0.1",
            "www.example.test",
        )
        assert INET_IP in proc.stdout.split()
        assert curl(plab, 2, url).stdout == "200"
        record = audit_record(
            plab,
            lambda r: r["event"] == "flow.allow" and r["client"] == "client/agent2",
            "the FQDN flow.allow record",
        )
        assert record["rule"] == "named-web"
        assert record["fqdn"] == "www.example.test"
        # The binding is agent2's own: mallory, allowed the same name, did not resolve it.
        mallory = plab.start_agent(3, client="mallory")
        try:
            assert curl(plab, 3, url).stdout != "200"
        finally:
            mallory.stop()
    finally:
        agent2.stop()


def test_reload_that_removes_access_cuts_a_running_download(plab: Lab, agent1: object) -> None:
    policy: Path = plab.policy  # type: ignore[attr-defined]
    out = plab.workdir / "partial.bin"
    download = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            plab.agent_ns(1),
            "curl",
            "-sS",
            "--limit-rate",
            "1M",
            "--speed-limit",
            "1000",
            "--speed-time",
            "3",
            "--max-time",
            "60",
            "-o",
            str(out),
            f"http://{INET_IP}:{HTTP_PORT}/blob.bin",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: out.exists() and out.stat().st_size > 200_000,
            20,
            "the download to be under way",
        )
        policy.write_text(POLICY_WITHOUT_OPS)
        new_version = policy_version(policy)
        audit_record(
            plab,
            lambda r: r["event"] == "policy.loaded" and r["version"] == new_version,
            "the new policy to load",
        )
        code = download.wait(timeout=60)
    finally:
        if download.poll() is None:
            download.kill()
            download.wait()
        assert download.stderr is not None
        download.stderr.close()
    assert code != 0, "the download finished although the policy revoked it"
    assert out.stat().st_size < plab.blob.stat().st_size  # type: ignore[attr-defined]
    ended = audit_record(
        plab,
        lambda r: (
            r["event"] == "flow.end" and r["reason"] == "policy_revoked" and r["dport"] == HTTP_PORT
        ),
        "the flow.end record of the cut download",
    )
    assert ended["client"] == "client/agent1"
    assert int(ended["bytes_in"]) > 200_000  # type: ignore[call-overload]
    assert plab.relay_metric("zgate_policy_version_info", version=new_version) == 1
    # The session itself stayed up, and new flows are decided by the new policy.
    status = plab.agent_status(1)
    assert status is not None and status["state"] == "connected"
    assert curl(plab, 1, f"http://{INET_IP}:{HTTP_PORT}/").stdout != "200"
    # Restore the first policy (through the reload endpoint this time).
    policy.write_text(POLICY)
    proc = plab.ns(plab.relay_ns, "curl", "-sS", "-X", "POST", "http://127.0.0.1:9101/reload")
    assert json.loads(proc.stdout)["ok"] is True
    assert curl(plab, 1, f"http://{INET_IP}:{HTTP_PORT}/").stdout == "200"


def test_invalid_reload_keeps_the_running_policy(plab: Lab, agent1: object) -> None:
    policy: Path = plab.policy  # type: ignore[attr-defined]
    running = policy_version(policy)
    policy.write_text(POLICY.replace("group:ops", "group:nope"))
    try:
        refused = audit_record(
            plab, lambda r: r["event"] == "policy.refused", "the policy.refused record"
        )
        assert "nope" in str(refused["error"])
        wait_until(
            lambda: plab.relay_metric("zgate_policy_last_reload_ok") == 0,
            10,
            "the reload failure metric",
        )
        assert plab.relay_metric("zgate_policy_version_info", version=running) == 1
        assert curl(plab, 1, f"http://{INET_IP}:{HTTP_PORT}/").stdout == "200"
        relay = plab.relay  # type: ignore[attr-defined]
        assert any(
            r.get("msg") == "policy refused; keeping the running version" for r in relay.json_log()
        )
    finally:
        policy.write_text(POLICY)
    wait_until(
        lambda: plab.relay_metric("zgate_policy_last_reload_ok") == 1,
        10,
        "the good policy to load again",
    )


def test_sessions_are_audited(plab: Lab, agent1: object) -> None:
    opened = audit_record(
        plab,
        lambda r: r["event"] == "session.open" and r["client"] == "client/agent1",
        "session.open",
    )
    assert opened["kind"] == "client"
    assert opened["mode"] == "datagram"
    addresses = opened["addresses"]
    assert isinstance(addresses, list)
    assert any(a.startswith("10.100.") for a in addresses)
    # A session of its own to close (not one an earlier test happened to leave behind).
    start = len(plab.audit_records())
    assert plab.start_agent(2).stop() == 0
    closed = audit_record(
        plab,
        lambda r: r["event"] == "session.close" and r["client"] == "client/agent2",
        "session.close",
        since=start,
    )
    assert closed["reason"]
    assert float(closed["duration_s"]) > 0  # type: ignore[arg-type]


def test_sighup_reloads_the_policy_and_reopens_the_audit_log(plab: Lab, agent1: object) -> None:
    import signal

    policy: Path = plab.policy  # type: ignore[attr-defined]
    relay = plab.relay  # type: ignore[attr-defined]
    relay.stop()
    # Without the file watcher, only SIGHUP (or POST /reload) makes the relay look.
    relay = plab.relay = plab.start_relay(  # type: ignore[attr-defined]
        "--policy", str(policy), "--policy-check-interval", "0"
    )
    plab.wait_agent_connected(1, timeout=40)
    url = f"http://{INET_IP}:{HTTP_PORT}/"
    policy.write_text(POLICY_WITHOUT_OPS)
    new_version = policy_version(policy)
    assert curl(plab, 1, url).stdout == "200"  # not reloaded yet
    rotated = plab.workdir / "audit.log.1"
    plab.audit_log.rename(rotated)  # what logrotate does before it sends SIGHUP
    relay.proc.send_signal(signal.SIGHUP)
    loaded = audit_record(
        plab,
        lambda r: r["event"] == "policy.loaded" and r["version"] == new_version,
        "policy.loaded after SIGHUP",
    )
    assert loaded["source"] == "sighup"
    assert rotated.exists() and plab.audit_log.exists()  # reopened: a new file
    assert curl(plab, 1, url).stdout != "200"
    policy.write_text(POLICY)
    relay.proc.send_signal(signal.SIGHUP)
    audit_record(
        plab,
        lambda r: r["event"] == "policy.loaded" and r["version"] == policy_version(policy),
        "the first policy again",
    )
    assert curl(plab, 1, url).stdout == "200"

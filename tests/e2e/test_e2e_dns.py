"""Name resolution through the tunnel, end to end: an agent started with the defaults points
its namespace's resolver at the relay, names resolve through the relay's DNS service (which
asks the internet host's DNS server), and the namespace's resolv.conf comes back when the
agent stops, or on its next start after a crash.

Each agent namespace has its own resolv.conf, which ``ip netns exec`` bind-mounts over
/etc/resolv.conf: renaming over it fails with EBUSY, so the agent rewrites it in place.
"""

from __future__ import annotations

import signal
from pathlib import Path

from zgate_host.resolver import is_managed, nameservers
from zgate_lab.lab import DNS_ZONE, HTTP_PORT, VENV_BIN, Lab

NAME = "www.example.test"


def resolve_v4(lab: Lab, n: int, name: str) -> list[str]:
    """The IPv4 addresses ``getent`` finds for ``name`` in agent n's namespace."""
    proc = lab.ns(lab.agent_ns(n), "getent", "ahostsv4", name, check=False, timeout=30)
    return sorted({line.split()[0] for line in proc.stdout.splitlines() if line.strip()})


def messages(log: list[dict[str, object]]) -> list[str]:
    return [str(r.get("msg")) for r in log]


def test_agent_resolves_names_through_the_relay_and_restores_the_resolver(lab: Lab) -> None:
    conf = lab.resolv_conf(lab.agent_ns(1))
    before, inode = conf.read_text(), conf.stat().st_ino
    host_before = Path("/etc/resolv.conf").read_bytes()
    assert resolve_v4(lab, 1, NAME) == []  # no tunnel, no resolver
    agent = lab.start_agent(1)
    try:
        status = lab.agent_status(1)
        assert status is not None
        dns = status["dns"]
        assert isinstance(dns, dict)
        assert (dns["state"], dns["method"]) == ("on", "resolv.conf")
        assert dns["servers"] == ["10.100.0.1", "fd7a:7a67::1"]
        assert "in place" in str(dns["where"])  # the bind mount: EBUSY, then in place
        # The namespace's file, rewritten in place (same inode, the mount stays).
        text = conf.read_text()
        assert is_managed(text) and nameservers(text) == ["10.100.0.1", "fd7a:7a67::1"]
        assert conf.stat().st_ino == inode
        assert Path("/etc/resolv.conf").read_bytes() == host_before  # the machine's: untouched
        # Names resolve through the relay, without Lab.use_resolver.
        assert resolve_v4(lab, 1, NAME) == [a for a in DNS_ZONE[NAME] if ":" not in a]
        got = lab.ns(
            lab.agent_ns(1),
            "curl",
            "-sf",
            "--max-time",
            "10",
            f"http://{NAME}:{HTTP_PORT}/",
            check=False,
        )
        assert got.returncode == 0 and "blob.bin" in got.stdout, got.stderr
        # `zgate-agent status` says so.
        shown = lab.ns(lab.agent_ns(1), str(VENV_BIN / "zgate-agent"), "status", check=False)
        line = next(x for x in shown.stdout.splitlines() if x.startswith("dns:"))
        assert line.startswith("dns:       10.100.0.1, fd7a:7a67::1 via resolv.conf: /etc/resolv")
        assert line.endswith("(managed, in place)"), line
        up = [
            r for r in agent.json_log() if r.get("msg") == "DNS: names resolve through the tunnel"
        ]
        assert len(up) == 1 and up[0]["method"] == "resolv.conf"
    finally:
        assert agent.stop() == 0
    assert conf.read_text() == before and conf.stat().st_ino == inode
    assert "DNS: restored the original resolver configuration" in messages(agent.json_log())
    assert not any(r.get("levelname") == "WARNING" for r in agent.json_log() if "DNS" in str(r))
    assert resolve_v4(lab, 1, NAME) == []


def test_after_a_crash_the_next_start_restores_the_resolver(lab: Lab) -> None:
    conf = lab.resolv_conf(lab.agent_ns(2))
    before = conf.read_text()
    crashed = lab.start_agent(2)
    assert is_managed(conf.read_text())
    crashed.stop(sig=signal.SIGKILL)  # no cleanup
    assert is_managed(conf.read_text())
    backup = lab.workdir / "agent2-state" / "resolv.conf.backup.json"
    assert backup.exists()
    # Started with --no-dns: it still puts back what the crashed agent left, then leaves
    # the resolver alone.
    agent = lab.start_agent(2, extra=["--no-dns"])
    try:
        assert conf.read_text() == before and not backup.exists()
        status = lab.agent_status(2)
        assert status is not None and status["dns"] == {
            "state": "off",
            "reason": "--no-dns",
            "method": None,
            "servers": [],
            "domains": [],
            "where": None,
        }
        assert any("did not stop cleanly" in m for m in messages(agent.json_log()))
    finally:
        assert agent.stop() == 0
    assert conf.read_text() == before

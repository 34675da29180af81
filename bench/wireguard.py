"""The wireguard-go path of bench/tunnel.py: what users would run instead of zgate.

The same lab topology as zgate's paths: wireguard-go in the agent namespace dials
wireguard-go in the relay namespace over the LAN (198.51.100.0/24), and the relay forwards and
masquerades the tunnel's traffic to the internet host, as zgate's relay does. Only a host route
to the benchmark's target goes into the tunnel, and the whole thing is taken down after each
repetition, so it never captures a zgate path's traffic.

Needs Debian's `wireguard-go` and `wireguard-tools` (`wg`); `available()` says when they are
missing. The userspace daemon is used on purpose, even where the kernel has WireGuard: it is
the Go program a Python tunnel is compared with.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from zgate_lab.lab import RELAY_LAN_IP, Daemon, Lab, run, wait_until

PORT = 51820
RELAY_TUNNEL_IP = "10.201.0.1"
AGENT_TUNNEL_IP = "10.201.0.2"
TUNNEL_NET = "10.201.0.0/24"
MTU = 1420  # wireguard-go's default
NFT_TABLE = "zgate_bench_wg"


def available() -> str | None:
    """Why the wireguard-go path cannot run here, or None when it can."""
    for tool in ("wireguard-go", "wg"):
        if shutil.which(tool) is None:
            return f"needs {tool!r} (Debian: apt-get install wireguard-go wireguard-tools)"
    return None


def version() -> str:
    """wireguard-go's version line, for the run's machine record."""
    try:
        proc = subprocess.run(
            ["wireguard-go", "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return proc.stdout.splitlines()[0] if proc.stdout else "unknown"


def _keypair(workdir: Path, name: str) -> tuple[Path, str]:
    """A private key file (0600) and its public key."""
    private = run(["wg", "genkey"]).stdout.strip()
    key_file = workdir / f"wg-{name}.key"
    key_file.touch(mode=0o600)
    key_file.write_text(private + "\n")
    public = run(["wg", "pubkey"], input=private).stdout.strip()
    return key_file, public


def _start(lab: Lab, ns: str, device: str) -> Daemon:
    """wireguard-go in the foreground in a namespace, once its device exists."""
    daemon = lab.spawn(f"wireguard-{device}", ns, ["wireguard-go", "-f", device])
    wait_until(
        lambda: (
            lab.ns(ns, "ip", "link", "show", device, check=False).returncode == 0
            or daemon.proc.poll() is not None
        ),
        10,
        f"wireguard-go's device {device}",
    )
    if daemon.proc.poll() is not None:
        raise AssertionError(f"wireguard-go exited early:\n{daemon.log()}")
    return daemon


@contextmanager
def wireguard_up(lab: Lab, agent: int, target: str) -> Iterator[tuple[int, int]]:
    """A wireguard-go tunnel from agent ``agent`` to the relay namespace carrying ``target``;
    yields the (relay side, agent side) wireguard-go pids; all of it removed on exit."""
    relay_ns, agent_ns = lab.relay_ns, lab.agent_ns(agent)
    relay_dev, agent_dev = f"wgr{lab.tag}"[:15], f"wga{lab.tag}"[:15]
    relay_key, relay_pub = _keypair(lab.workdir, "relay")
    agent_key, agent_pub = _keypair(lab.workdir, "agent")
    daemons: list[Daemon] = []
    try:
        daemons.append(_start(lab, relay_ns, relay_dev))
        daemons.append(_start(lab, agent_ns, agent_dev))
        lab.ns(
            relay_ns,
            *("wg", "set", relay_dev, "private-key", str(relay_key), "listen-port", str(PORT)),
            *("peer", agent_pub, "allowed-ips", f"{AGENT_TUNNEL_IP}/32"),
        )
        lab.ns(
            agent_ns,
            *("wg", "set", agent_dev, "private-key", str(agent_key)),
            *("peer", relay_pub, "endpoint", f"{RELAY_LAN_IP}:{PORT}", "allowed-ips", "0.0.0.0/0"),
        )
        for ns, dev, address in (
            (relay_ns, relay_dev, RELAY_TUNNEL_IP),
            (agent_ns, agent_dev, AGENT_TUNNEL_IP),
        ):
            lab.ns(ns, "ip", "addr", "add", f"{address}/24", "dev", dev)
            lab.ns(ns, "ip", "link", "set", dev, "mtu", str(MTU), "up")
        lab.ns(agent_ns, "ip", "route", "add", f"{target}/32", "dev", agent_dev)
        lab.ns(relay_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        rules = f"""table ip {NFT_TABLE} {{
            chain postrouting {{
                type nat hook postrouting priority srcnat;
                ip saddr {TUNNEL_NET} oifname "ri{lab.tag}" masquerade;
            }}
        }}"""
        run(["ip", "netns", "exec", relay_ns, "nft", "-f", "-"], input=rules)
        yield daemons[0].proc.pid, daemons[1].proc.pid
    finally:
        lab.ns(relay_ns, "nft", "delete", "table", "ip", NFT_TABLE, check=False)
        for daemon in reversed(daemons):
            daemon.stop(timeout=10)
        # wireguard-go removes its device when it ends; make sure of it all the same.
        lab.ns(agent_ns, "ip", "link", "del", agent_dev, check=False)
        lab.ns(relay_ns, "ip", "link", "del", relay_dev, check=False)

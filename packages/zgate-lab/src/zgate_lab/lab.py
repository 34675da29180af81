"""A throw-away lab of network namespaces: for the end-to-end tests, the benchmarks and
`zgate-lab demo`.

Topology (all names carry a unique suffix; nothing is routed to the machine's real
interfaces):

    agentN ns  198.51.100.1N/24 --- br (relay ns) 198.51.100.1/24      "the LAN"
    relay ns   203.0.113.1/24 + 2001:db8:113::1/64 --- inet ns        "the internet"
    inet ns    203.0.113.10/24 + 2001:db8:113::10/64 (HTTP, UDP echo)

With a private site (add_site):

    zcN ns     198.51.100.3N/24 on the LAN, 192.168.50.(1+N)/24 in the site   (connector N)
    zs ns      192.168.50.10/24 on the site's bridge (HTTP, DNS)            "the private site"

Agents have no route to the internet except through the tunnel, and none to the site
except through the relay and a connector.

With ``Lab(leak_path=True)`` (the end-to-end tests) each agent also has a way out that
bypasses the tunnel, as a laptop has its home router:

    agentN ns  198.18.N.2/24 (default route) --- inet ns 198.18.N.1/24   "the agent's WAN"

Everything that arrives at the internet host over it is counted (`Lab.leaked_packets`): a
packet that went around the tunnel reaches the internet host there, and is seen.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
#: Where each lab records its owner process and work directory, so that `zgate-lab down`
#: removes only abandoned labs (and their temporary PKI) unless told --force.
LAB_RUN_DIR = Path("/run/zgate-lab")

RELAY_LAN_IP = "198.51.100.1"
RELAY_INET_IP = "203.0.113.1"
RELAY_INET_IP6 = "2001:db8:113::1"
INET_IP = "203.0.113.10"
INET_IP6 = "2001:db8:113::10"
INET_IP_OTHER = "203.0.113.20"
"""A second address of the internet host, for tests that allow one and deny the other."""
DNS_ZONE = {
    "www.example.test": [INET_IP, INET_IP6],
    "other.example.test": [INET_IP_OTHER],
}
"""What the internet host's DNS server answers (the relay's DNS service forwards to it)."""
HTTP_PORT = 8080
AGENT_RESOLV_NOTE = "# zgate-lab: this agent namespace's own resolv.conf\n"
UDP_ECHO_PORT = 7007
# A direct agent <-> internet-host link that bypasses the tunnel (benchmark baseline);
# TEST-NET-1 addresses, which exist only inside the lab's namespaces.
SITE_NET = "192.168.50.0/24"
SITE_HOST_IP = "192.168.50.10"
SITE_ZONE = {"wiki.corp.internal": [SITE_HOST_IP]}
"""What the site's own DNS server answers (only the site can resolve these)."""
LEAK_TABLE = "zgate_lab_leaks"
"""The internet host's nftables table that counts what arrives over the agents' WANs."""
PLAIN_AGENT_IP = "192.0.2.1"
PLAIN_INET_IP = "192.0.2.10"
IPERF_PORT = 5201


def run(
    cmd: Sequence[str], *, check: bool = True, timeout: float = 60, **kw: object
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; raise with its output on failure."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc  # type: ignore[no-any-return]


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    """Poll a condition until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Daemon:
    """A process running in a namespace, its log in a file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")

    def json_log(self) -> list[dict[str, object]]:
        """The JSON log lines it wrote so far."""
        records = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Signal the process and wait for it; kill it if it does not end."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


@dataclass
class Lab:
    """The namespaces, the PKI and the daemons of one test session."""

    tag: str
    workdir: Path
    namespaces: list[str] = field(default_factory=list)
    daemons: list[Daemon] = field(default_factory=list)
    resolver_dirs: list[Path] = field(default_factory=list)
    agents: int = 0
    #: Whether ``workdir`` (its PKI, logs) is this lab's own, for `zgate-lab down` to delete
    #: if the lab is abandoned.
    temporary_workdir: bool = False
    #: Whether agent namespaces get a WAN to the internet host besides the LAN (see the
    #: module's docstring): without it a leak around the tunnel has nowhere to go, so a
    #: test that nothing leaks could not fail.
    leak_path: bool = False

    def __post_init__(self) -> None:
        # The tag names veths too (15 characters at most), and `zgate-lab down` finds a
        # crashed lab's namespaces by their names alone (see is_lab_namespace).
        if not _TAG.fullmatch(self.tag):
            raise ValueError(f"lab tag must be 1-12 lowercase letters or digits, got {self.tag!r}")

    @property
    def relay_ns(self) -> str:
        return f"zr-{self.tag}"

    def extra_relay_ns(self, n: int) -> str:
        """The namespace of the lab's relay number `n` (2-9) beside the first one."""
        return f"zr{n}-{self.tag}"

    @property
    def inet_ns(self) -> str:
        return f"zi-{self.tag}"

    def agent_ns(self, n: int) -> str:
        return f"za{n}-{self.tag}"

    @property
    def site_ns(self) -> str:
        return f"zs-{self.tag}"

    def connector_ns(self, n: int) -> str:
        return f"zc{n}-{self.tag}"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    # ---------------------------------------------------------------- building

    def ns(
        self, ns: str, *cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside a namespace."""
        return run(["ip", "netns", "exec", ns, *cmd], check=check, timeout=timeout)

    def add_ns(self, name: str) -> None:
        if not self.namespaces:
            self._claim()
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        self.ns(name, "ip", "link", "set", "lo", "up")

    def build(self, agents: int = 2) -> None:
        """Create the namespaces, links, addresses and the internet host's services."""
        self.add_ns(self.relay_ns)
        self.add_ns(self.inet_ns)
        r, i = self.relay_ns, self.inet_ns
        # relay <-> internet
        add_veth(f"ri{self.tag}", r, f"ir{self.tag}", i)
        self.ns(r, "ip", "addr", "add", f"{RELAY_INET_IP}/24", "dev", f"ri{self.tag}")
        self.ns(r, "ip", "addr", "add", f"{RELAY_INET_IP6}/64", "dev", f"ri{self.tag}", "nodad")
        self.ns(r, "ip", "link", "set", f"ri{self.tag}", "up")
        self.ns(i, "ip", "addr", "add", f"{INET_IP}/24", "dev", f"ir{self.tag}")
        self.ns(i, "ip", "addr", "add", f"{INET_IP_OTHER}/24", "dev", f"ir{self.tag}")
        self.ns(i, "ip", "addr", "add", f"{INET_IP6}/64", "dev", f"ir{self.tag}", "nodad")
        self.ns(i, "ip", "link", "set", f"ir{self.tag}", "up")
        # the LAN: a bridge in the relay namespace
        self.ns(r, "ip", "link", "add", "br0", "type", "bridge")
        self.ns(r, "ip", "addr", "add", f"{RELAY_LAN_IP}/24", "dev", "br0")
        self.ns(r, "ip", "link", "set", "br0", "up")
        if self.leak_path:
            rules = f"""table inet {LEAK_TABLE} {{
                chain prerouting {{ type filter hook prerouting priority raw; policy accept; }}
            }}"""
            run(["ip", "netns", "exec", i, "nft", "-f", "-"], input=rules)
        for n in range(1, agents + 1):
            self.add_agent_ns(n)

    def add_agent_ns(self, n: int) -> str:
        """One more agent namespace on the LAN (and its WAN, with ``leak_path``)."""
        a, r = self.agent_ns(n), self.relay_ns
        self.add_ns(a)
        add_veth(f"a{n}{self.tag}", a, f"b{n}{self.tag}", r)
        self.ns(r, "ip", "link", "set", f"b{n}{self.tag}", "master", "br0", "up")
        self.ns(a, "ip", "addr", "add", f"198.51.100.{10 + n}/24", "dev", f"a{n}{self.tag}")
        self.ns(a, "ip", "link", "set", f"a{n}{self.tag}", "up")
        # Its own resolv.conf, mounted over /etc/resolv.conf by `ip netns exec`: the agent
        # points it at the relay while it runs (never the machine's own file).
        self.use_resolver(a, "127.0.0.1", note=AGENT_RESOLV_NOTE)
        if self.leak_path:
            self._add_wan(n)
        self.agents = max(self.agents, n)
        return a

    def add_extra_relay_ns(self, n: int) -> tuple[str, str]:
        """Namespace and LAN address (198.51.100.n) of one more relay host on the LAN, for
        tests where several relays serve agents. It has no way to the internet host."""
        if not 2 <= n <= 9:
            raise ValueError("extra relays are numbered 2-9")
        ns, r = self.extra_relay_ns(n), self.relay_ns
        self.add_ns(ns)
        add_veth(f"q{n}{self.tag}", ns, f"p{n}{self.tag}", r)
        self.ns(r, "ip", "link", "set", f"p{n}{self.tag}", "master", "br0", "up")
        address = f"198.51.100.{n}"
        self.ns(ns, "ip", "addr", "add", f"{address}/24", "dev", f"q{n}{self.tag}")
        self.ns(ns, "ip", "link", "set", f"q{n}{self.tag}", "up")
        return ns, address

    def _add_wan(self, n: int) -> None:
        """Agent n's own way to the internet host: a veth in 198.18.N.0/24 (RFC 2544's
        benchmarking range) with the agent's default route, every arrival counted."""
        a, i = self.agent_ns(n), self.inet_ns
        near, far = f"w{n}{self.tag}", f"v{n}{self.tag}"
        add_veth(near, a, far, i)
        # IPv4 only, and no IPv6 at all on it: no router solicitations or MLD reports that
        # the counter would mistake for leaks.
        for ns, dev, address in ((a, near, f"198.18.{n}.2/24"), (i, far, f"198.18.{n}.1/24")):
            self.ns(ns, "sh", "-c", f"echo 1 > /proc/sys/net/ipv6/conf/{dev}/disable_ipv6")
            self.ns(ns, "ip", "addr", "add", address, "dev", dev)
            self.ns(ns, "ip", "link", "set", dev, "up")
        self.ns(a, "ip", "route", "add", "default", "via", f"198.18.{n}.1", "dev", near)
        rules = f"""add counter inet {LEAK_TABLE} agent{n}
            add rule inet {LEAK_TABLE} prerouting iifname "{far}" counter name "agent{n}"
        """
        run(["ip", "netns", "exec", i, "nft", "-f", "-"], input=rules)

    def leaked_packets(self, n: int) -> int:
        """How many packets the internet host has received over agent n's WAN, which only
        a packet that went around the tunnel takes (needs ``leak_path``)."""
        proc = self.ns(
            self.inet_ns, "nft", "-j", "list", "counter", "inet", LEAK_TABLE, f"agent{n}"
        )
        for item in json.loads(proc.stdout)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise AssertionError(f"no leak counter for agent{n}:\n{proc.stdout}")

    def add_site(self, connectors: int = 1) -> None:
        """A private site (192.168.50.0/24, a bridge in its own namespace with the site host
        on it) and ``connectors`` connector namespaces, each on the LAN and in the site."""
        s, r = self.site_ns, self.relay_ns
        self.add_ns(s)
        self.ns(s, "ip", "link", "add", "brs", "type", "bridge")
        self.ns(s, "ip", "addr", "add", f"{SITE_HOST_IP}/24", "dev", "brs")
        self.ns(s, "ip", "link", "set", "brs", "up")
        for n in range(1, connectors + 1):
            c = self.connector_ns(n)
            self.add_ns(c)
            lan, lan_peer = f"c{n}{self.tag}", f"d{n}{self.tag}"
            add_veth(lan, c, lan_peer, r)
            self.ns(r, "ip", "link", "set", lan_peer, "master", "br0", "up")
            self.ns(c, "ip", "addr", "add", f"198.51.100.{30 + n}/24", "dev", lan)
            self.ns(c, "ip", "link", "set", lan, "up")
            site, site_peer = f"s{n}{self.tag}", f"t{n}{self.tag}"
            add_veth(site, c, site_peer, s)
            self.ns(s, "ip", "link", "set", site_peer, "master", "brs", "up")
            self.ns(c, "ip", "addr", "add", f"192.168.50.{1 + n}/24", "dev", site)
            self.ns(c, "ip", "link", "set", site, "up")

    def use_resolver(self, ns: str, address: str, *, note: str = "") -> None:
        """Make programs in ``ns`` resolve names with ``address`` (``ip netns exec`` mounts
        /etc/netns/NS/resolv.conf over /etc/resolv.conf); removed by teardown."""
        directory = Path("/etc/netns") / ns
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "resolv.conf").write_text(f"{note}nameserver {address}\noptions timeout:2\n")
        if directory not in self.resolver_dirs:
            self.resolver_dirs.append(directory)

    def resolv_conf(self, ns: str) -> Path:
        """The file programs in ``ns`` see as /etc/resolv.conf (see use_resolver)."""
        return Path("/etc/netns") / ns / "resolv.conf"

    def start_site_services(self, blob_size: int = 4 * 1024 * 1024) -> Path:
        """HTTP (a random blob) and DNS (SITE_ZONE) on the site host; the blob's path."""
        www = self.workdir / "site-www"
        www.mkdir(exist_ok=True)
        blob = www / "blob.bin"
        blob.write_bytes(os.urandom(blob_size))
        self.spawn(
            "site-http",
            self.site_ns,
            [
                sys.executable,
                "-m",
                "http.server",
                "--bind",
                SITE_HOST_IP,
                str(HTTP_PORT),
                "--directory",
                str(www),
            ],
        )
        zone = [f"{name}={','.join(addresses)}" for name, addresses in SITE_ZONE.items()]
        self.spawn(
            "site-dns",
            self.site_ns,
            [sys.executable, "-m", "zgate_lab.lab_dns", "serve", "53", *zone],
        )
        wait_until(
            lambda: f":{HTTP_PORT}" in self.ns(self.site_ns, "ss", "-ltn", check=False).stdout,
            10,
            "the site's HTTP server",
        )
        return blob

    def start_connector(
        self,
        n: int,
        ident: str,
        *,
        site: str = SITE_NET,
        engine: str | None = None,
        extra: Sequence[str] = (),
    ) -> Daemon:
        """Start connector n (certificate ``ident``) serving ``site``; wait until connected.

        ``engine``: its QUIC engine (--quic-engine); None leaves the connector's default.
        """
        connector = self.spawn(
            f"connector{n}",
            self.connector_ns(n),
            self.connector_command(ident, site=site, engine=engine, extra=extra),
            env={"ZGATE_CONNECTOR_BACKOFF_MAX": "2"},
        )

        def connected() -> bool:
            if connector.proc.poll() is not None:
                raise AssertionError(f"connector{n} exited:\n{connector.log()}")
            status = self.daemon_status(self.connector_ns(n), 9103)
            return status is not None and status.get("state") == "connected"

        wait_until(connected, 30, f"connector{n} to connect")
        return connector

    def make_pki(
        self, clients: Sequence[str] = ("agent1", "agent2"), connectors: Sequence[str] = ()
    ) -> None:
        """A PKI with the relay reachable as "relay" / 198.51.100.1, and client certs."""
        zgate = str(VENV_BIN / "zgate")
        run(
            [
                zgate,
                "pki",
                "init",
                "--dir",
                str(self.pki),
                "--relay-name",
                "relay",
                "--relay-ip",
                RELAY_LAN_IP,
            ]
        )
        for client in clients:
            run([zgate, "pki", "issue", "client", client, "--dir", str(self.pki)])
        for connector in connectors:
            run([zgate, "pki", "issue", "connector", connector, "--dir", str(self.pki)])

    def start_inet_services(
        self, blob_size: int = 20 * 1024 * 1024, dns_zone: dict[str, list[str]] | None = None
    ) -> Path:
        """HTTP server (a random blob of ``blob_size`` bytes), UDP echo and DNS (``dns_zone``,
        by default DNS_ZONE) on the internet host."""
        www = self.workdir / "www"
        www.mkdir(exist_ok=True)
        blob = www / "blob.bin"
        with blob.open("wb") as f:
            f.write(os.urandom(blob_size))
        self.spawn(
            "http",
            self.inet_ns,
            [
                sys.executable,
                "-m",
                "http.server",
                "--bind",
                "::",
                str(HTTP_PORT),
                "--directory",
                str(www),
            ],
        )
        self.spawn(
            "udpecho",
            self.inet_ns,
            [sys.executable, "-m", "zgate_lab.lab_udp", "echo", str(UDP_ECHO_PORT)],
        )
        zone = [
            f"{name}={','.join(addresses)}"
            for name, addresses in (DNS_ZONE if dns_zone is None else dns_zone).items()
        ]
        self.spawn(
            "dns", self.inet_ns, [sys.executable, "-m", "zgate_lab.lab_dns", "serve", "53", *zone]
        )
        self.wait_listening(self.inet_ns, HTTP_PORT, "the internet host's HTTP server")
        return blob

    def start_http_server(self, name: str, ns: str, port: int, directory: Path) -> Daemon:
        """One more HTTP server (on every address of ``ns``), once it listens."""
        server = self.spawn(
            name,
            ns,
            [
                sys.executable,
                "-m",
                "http.server",
                "--bind",
                "::",
                str(port),
                "--directory",
                str(directory),
            ],
        )
        self.wait_listening(ns, port, f"the HTTP server {name}")
        return server

    def wait_listening(self, ns: str, port: int, what: str) -> None:
        """Wait until something in ``ns`` listens on TCP ``port``."""
        wait_until(
            lambda: f":{port} " in self.ns(ns, "ss", "-ltnH", check=False).stdout,
            10,
            what,
        )

    def add_plain_link(self, n: int = 1) -> str:
        """Join agent n straight to the internet host by a veth in 192.0.2.0/24, no tunnel.

        The benchmark's baseline path; it is more specific than the agent's tunnel routes,
        so it keeps working while an agent runs. Returns the internet host's address on it.
        """
        a, i = self.agent_ns(n), self.inet_ns
        near, far = f"p{n}{self.tag}", f"q{n}{self.tag}"
        add_veth(near, a, far, i)
        self.ns(a, "ip", "addr", "add", f"{PLAIN_AGENT_IP}/24", "dev", near)
        self.ns(a, "ip", "link", "set", near, "up")
        self.ns(i, "ip", "addr", "add", f"{PLAIN_INET_IP}/24", "dev", far)
        self.ns(i, "ip", "link", "set", far, "up")
        return PLAIN_INET_IP

    def add_underlay_loss(self, percent: float, n: int = 1) -> None:
        """Drop ``percent`` % of the packets each way on the tunnel's underlay (UDP 4433 at
        the relay) and on agent n's plain link: a lossy network for benchmarks.

        Done with nftables' random numbers, since the netem qdisc is not in every kernel.
        """
        threshold = round(percent * 100)  # out of 10000
        drop = f"numgen random mod 10000 < {threshold} counter drop"
        relay_rules = f"""table inet zgate_lab_loss {{
            chain input {{ type filter hook input priority -10; udp dport 4433 {drop}; }}
            chain output {{ type filter hook output priority -10; udp sport 4433 {drop}; }}
        }}"""
        far = f"q{n}{self.tag}"
        inet_rules = f"""table inet zgate_lab_loss {{
            chain input {{ type filter hook input priority -10; iifname "{far}" {drop}; }}
            chain output {{ type filter hook output priority -10; oifname "{far}" {drop}; }}
        }}"""
        for ns, rules in ((self.relay_ns, relay_rules), (self.inet_ns, inet_rules)):
            run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules)

    def start_iperf_server(self, port: int = IPERF_PORT) -> Daemon:
        """An iperf3 server on the internet host (a child process, stopped by teardown)."""
        server = self.spawn(
            "iperf3", self.inet_ns, ["iperf3", "-s", "-p", str(port), "--idle-timeout", "30"]
        )
        wait_until(
            lambda: (
                f":{port} " in self.ns(self.inet_ns, "ss", "-ltn", check=False).stdout
                or server.proc.poll() is not None
            ),
            10,
            "the iperf3 server",
        )
        if server.proc.poll() is not None:
            raise AssertionError(f"iperf3 server exited early:\n{server.log()}")
        return server

    # ---------------------------------------------------------------- daemons

    def spawn(
        self, name: str, ns: str, cmd: Sequence[str], env: dict[str, str] | None = None
    ) -> Daemon:
        """Start a process in a namespace, logging to a file."""
        log_path = self.workdir / f"{name}.log"
        full_env = {**os.environ, **(env or {})}
        with log_path.open("ab") as log_file:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *cmd],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=full_env,
            )
        daemon = Daemon(name, proc, log_path)
        self.daemons.append(daemon)
        return daemon

    @property
    def audit_log(self) -> Path:
        """Where the lab's relay writes its audit records."""
        return self.workdir / "audit.log"

    def audit_records(self) -> list[dict[str, object]]:
        """The relay's audit records so far."""
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line]

    def relay_command(self, *extra: str, engine: str | None = None) -> list[str]:
        """The relay's command line: `serve` on the LAN with the lab's PKI, then ``extra``."""
        return [
            str(VENV_BIN / "serve"),
            "--pki",
            str(self.pki),
            "--listen",
            f"{RELAY_LAN_IP}:4433",
            "--metrics",
            "127.0.0.1:9101",
            "--audit-log",
            str(self.audit_log),
            "--dns-upstream",
            INET_IP,
            "--tun-name",
            "zgate0",
            # The stateless reset key in the lab's own directory (not the host's state
            # directory), the same file across the lab relay's restarts.
            "--reset-key",
            str(self.workdir / "relay-reset.key"),
            *engine_flag(engine),
            *extra,
        ]

    def start_relay(self, *extra: str, engine: str | None = None) -> Daemon:
        """Start the relay and wait until it listens.

        ``engine``: its QUIC engine (--quic-engine); None leaves the relay's default.
        """
        relay = self.spawn("relay", self.relay_ns, self.relay_command(*extra, engine=engine))
        wait_until(
            lambda: self.relay_metrics_text() != "" or relay.proc.poll() is not None,
            20,
            "the relay's metrics endpoint",
        )
        if relay.proc.poll() is not None:
            raise AssertionError(f"relay exited early:\n{relay.log()}")
        return relay

    def start_extra_relay(self, n: int, *extra: str, engine: str | None = None) -> Daemon:
        """Start relay number ``n`` (2-9) at 198.51.100.n:4433 in its own namespace (made
        on first use), with the lab's PKI and its own audit log; wait until it listens.
        Its agents reach the internet host through the first relay's namespace (which
        forwards while its relay runs or after it crashed), so agents may fail over
        between the two."""
        ns = self.extra_relay_ns(n)
        address = f"198.51.100.{n}"
        if ns not in self.namespaces:
            self.add_extra_relay_ns(n)
            self.ns(ns, "ip", "route", "add", "default", "via", RELAY_LAN_IP)
            self.ns(self.inet_ns, "ip", "route", "replace", f"{address}/32", "via", RELAY_INET_IP)
        command = self.relay_command(
            "--listen",
            f"{address}:4433",
            "--audit-log",
            str(self.workdir / f"audit-relay{n}.log"),
            *extra,
            engine=engine,
        )
        relay = self.spawn(f"relay{n}", ns, command)
        wait_until(
            lambda: self.relay_metrics_text(ns) != "" or relay.proc.poll() is not None,
            20,
            f"relay {n}'s metrics endpoint",
        )
        if relay.proc.poll() is not None:
            raise AssertionError(f"relay {n} exited early:\n{relay.log()}")
        return relay

    def start_agent(
        self,
        n: int,
        *,
        client: str | None = None,
        mode: str = "datagram",
        engine: str | None = None,
        wait: bool = True,
        extra: Sequence[str] = (),
    ) -> Daemon:
        """Start agent n with client certificate ``client`` (default agentN).

        ``engine``: its QUIC engine (--quic-engine); None leaves the agent's default.
        """
        agent = self.spawn(
            f"agent{n}",
            self.agent_ns(n),
            self.agent_command(n, client=client, mode=mode, engine=engine, extra=extra),
            env={"ZGATE_AGENT_BACKOFF_MAX": "2"},
        )
        if wait:
            self.wait_agent_connected(n, agent)
        return agent

    def agent_command(
        self,
        n: int,
        *,
        client: str | None = None,
        mode: str = "datagram",
        engine: str | None = None,
        extra: Sequence[str] = (),
    ) -> list[str]:
        """Agent n's command line: `zgate-agent up` against the lab's relay, then ``extra``."""
        return [
            *self._tunnel_command("zgate-agent", "clients", client or f"agent{n}", 9102, "ztun0"),
            "--mode",
            mode,
            "--state-dir",
            str(self.workdir / f"agent{n}-state"),
            *engine_flag(engine),
            *extra,
        ]

    def connector_command(
        self,
        ident: str,
        *,
        site: str = SITE_NET,
        engine: str | None = None,
        extra: Sequence[str] = (),
    ) -> list[str]:
        """A connector's command line: `zgate-connector up` serving ``site``, then ``extra``."""
        return [
            *self._tunnel_command("zgate-connector", "connectors", ident, 9103, "zconn0"),
            "--site",
            site,
            *engine_flag(engine),
            *extra,
        ]

    def _tunnel_command(
        self, program: str, kind_dir: str, ident: str, metrics_port: int, tun_name: str
    ) -> list[str]:
        """`PROGRAM up` against the lab's relay, with certificate ``kind_dir/ident``."""
        return [
            str(VENV_BIN / program),
            "up",
            "--relay",
            f"{RELAY_LAN_IP}:4433",
            "--ca",
            str(self.pki / "ca.pem"),
            "--cert",
            str(self.pki / kind_dir / f"{ident}.pem"),
            "--key",
            str(self.pki / kind_dir / f"{ident}.key"),
            "--server-name",
            "relay",
            "--metrics",
            f"127.0.0.1:{metrics_port}",
            "--tun-name",
            tun_name,
        ]

    def agent_status(self, n: int) -> dict[str, object] | None:
        """The agent's /status, or None if it does not answer."""
        return self.daemon_status(self.agent_ns(n), 9102)

    def daemon_status(self, ns: str, port: int) -> dict[str, object] | None:
        """An agent's or connector's /status on 127.0.0.1:``port`` in ``ns``, or None."""
        url = f"http://127.0.0.1:{port}/status"
        proc = self.ns(ns, "curl", "-s", "--max-time", "2", url, check=False)
        if proc.returncode != 0 or not proc.stdout:
            return None
        return json.loads(proc.stdout)  # type: ignore[no-any-return]

    def wait_agent_connected(
        self, n: int, agent: Daemon | None = None, timeout: float = 30
    ) -> dict[str, object]:
        """Wait until agent n reports a connected tunnel; returns its status."""

        def connected() -> bool:
            if agent is not None and agent.proc.poll() is not None:
                raise AssertionError(f"agent{n} exited:\n{agent.log()}")
            status = self.agent_status(n)
            return status is not None and status.get("state") == "connected"

        wait_until(connected, timeout, f"agent{n} to connect")
        status = self.agent_status(n)
        assert status is not None
        return status

    def relay_metrics_text(self, ns: str | None = None) -> str:
        """The /metrics text of the relay in ``ns`` (default: the lab's relay), or ""."""
        proc = self.ns(
            ns or self.relay_ns,
            "curl",
            "-s",
            "--max-time",
            "2",
            "http://127.0.0.1:9101/metrics",
            check=False,
        )
        return proc.stdout if proc.returncode == 0 else ""

    def agent_metrics_text(self, n: int) -> str:
        """Agent n's Prometheus metrics text, or "" if it does not answer."""
        url = "http://127.0.0.1:9102/metrics"
        proc = self.ns(self.agent_ns(n), "curl", "-s", "--max-time", "2", url, check=False)
        return proc.stdout if proc.returncode == 0 else ""

    def relay_metric(self, name: str, **labels: str) -> float:
        """One sample of the relay's metrics (0 if absent)."""
        return metric_value(self.relay_metrics_text(), name, **labels)

    # ---------------------------------------------------------------- teardown

    def _claim(self) -> None:
        """Record this process as the lab's owner (see `read_owner`)."""
        LAB_RUN_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        record = {
            "pid": os.getpid(),
            "workdir": str(self.workdir),
            "temporary_workdir": self.temporary_workdir,
        }
        owner_file(self.tag).write_text(json.dumps(record) + "\n")

    def teardown(self) -> None:
        """Stop every daemon and delete every namespace, whatever state they are in."""
        owner_file(self.tag).unlink(missing_ok=True)
        for daemon in reversed(self.daemons):
            with contextlib.suppress(Exception):
                daemon.stop(timeout=10)
        for ns in reversed(self.namespaces):
            run(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()
        for directory in self.resolver_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        self.resolver_dirs.clear()


def engine_flag(engine: str | None) -> list[str]:
    """``--quic-engine ENGINE``, or nothing for None (the service's own default then applies,
    including its ZGATE_*_QUIC_ENGINE environment variable)."""
    return [] if engine is None else ["--quic-engine", engine]


def add_veth(name: str, ns: str, peer: str, peer_ns: str) -> None:
    """A veth pair: ``name`` in namespace ``ns``, ``peer`` in ``peer_ns``."""
    run(
        [
            "ip",
            "link",
            "add",
            name,
            "netns",
            ns,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            peer_ns,
        ]
    )


def metric_value(text: str, name: str, **labels: str) -> float:
    """Find ``name{labels}`` in Prometheus text format; 0 if absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        key, _, value = line.rpartition(" ")
        if "{" in key:
            metric, _, rest = key.partition("{")
            got = ",".join(sorted(rest.rstrip("}").split(","))) if rest.rstrip("}") else ""
        else:
            metric, got = key, ""
        if metric == name and got == want:
            return float(value)
    return 0.0


_TAG = re.compile(r"[0-9a-z]{1,12}")
_NAMESPACE = re.compile(r"(?:zr[2-9]?|zi|zs|za[1-9][0-9]?|zc[1-9][0-9]?)-[0-9a-z]{1,12}")


@dataclass(frozen=True)
class LabOwner:
    """Who made a lab: its process and its work directory."""

    pid: int
    workdir: Path
    temporary_workdir: bool


def owner_file(tag: str) -> Path:
    """Where the lab ``tag`` records its owner."""
    return LAB_RUN_DIR / f"{tag}.json"


def read_owner(tag: str) -> LabOwner | None:
    """The owner a lab recorded, or None (no record, or one that cannot be read)."""
    try:
        record = json.loads(owner_file(tag).read_text())
        return LabOwner(
            int(record["pid"]), Path(record["workdir"]), bool(record["temporary_workdir"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_lab_namespace(name: str) -> bool:
    """Whether ``name`` is one Lab gives its namespaces: zr-TAG, zi-TAG, zs-TAG, zaN-TAG or
    zcN-TAG."""
    return _NAMESPACE.fullmatch(name) is not None


def have_tools() -> str | None:
    """Why e2e tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN devices, nftables)"
    for tool in ("ip", "nft", "ping", "curl", "ss"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} command"
    return None

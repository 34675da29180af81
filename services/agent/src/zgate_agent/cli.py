"""`zgate-agent up|status|why`: flags -> AgentSettings -> run; or ask a running agent."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry

from zgate_agent.app import Agent
from zgate_agent.dns import describe as describe_dns
from zgate_agent.metrics import AgentMetrics
from zgate_agent.settings import AgentSettings
from zgate_agent.why import LOCAL_PATH, show_why, why_query
from zgate_host.errors import HostError
from zgate_host.httpd import Query, serve_status
from zgate_host.logs import configure_logging
from zgate_host.privileges import require_net_admin
from zgate_host.queue_flags import add_queue_flags
from zgate_host.settings import SettingsError, load_settings, parse_hostport
from zgate_host.tun import TunDevice
from zgate_pki import PkiError, check_identity_files
from zgate_proto.engines import DEFAULT_ENGINE, ENGINES

__all__ = [
    "add_liveness_flag",
    "add_quic_engine_flag",
    "main",
    "run_until_stopped",
    "run_up",
    "show_status",
]

log = logging.getLogger("zgate.agent")

DESCRIPTION = """\
zgate agent: puts this machine's traffic through a zgate relay. It connects to the relay
over QUIC with its client certificate (mTLS), opens a MASQUE CONNECT-IP tunnel (RFC 9484),
creates a TUN device with the address the relay assigns, routes traffic into it (keeping
the route to the relay itself outside), and reconnects by itself when the path breaks.

  zgate-agent up --relay relay.example:4433 --ca ca.pem --cert me.pem --key me.key
  zgate-agent status
  zgate-agent why tcp://db.corp.example:5432    # why the relay refuses (or allows) it

Settings come from, in rising order: defaults, the YAML --config file, ZGATE_AGENT_*
environment variables (e.g. ZGATE_AGENT_MODE=stream, ZGATE_AGENT_QUIC_ENGINE=qh3) and
flags. `up` needs root or CAP_NET_ADMIN (TUN device and routes)."""


def build_parser() -> argparse.ArgumentParser:
    """The agent's argument parser."""
    p = argparse.ArgumentParser(
        prog="zgate-agent",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="connect and run the tunnel until stopped (SIGTERM/SIGINT)")
    up.add_argument("--config", type=Path, help="YAML settings file (keys as the long flags)")
    up.add_argument(
        "--relay",
        action="append",
        metavar="HOST:PORT",
        help="relay address (repeatable: one is used at a time, in order, and the agent moves "
        "to the next when its relay is lost; a name with several addresses counts as several) "
        "[127.0.0.1:4433]",
    )
    up.add_argument(
        "--ca", type=Path, metavar="FILE", help="CA certificate of the relay [STATE_DIR/ca.pem]"
    )
    up.add_argument(
        "--cert", type=Path, metavar="FILE", help="this agent's certificate [STATE_DIR/agent.pem]"
    )
    up.add_argument(
        "--key", type=Path, metavar="FILE", help="this agent's private key [STATE_DIR/agent.key]"
    )
    up.add_argument("--server-name", metavar="NAME", help="TLS name of the relay [relay host]")
    up.add_argument(
        "--connect-timeout",
        type=float,
        metavar="SECONDS",
        help="how long one connection attempt may take before it is retried [10]",
    )
    add_liveness_flag(up)
    up.add_argument(
        "--mode",
        choices=["datagram", "stream"],
        help="datagram: QUIC DATAGRAM frames (default); stream: capsules on the "
        "CONNECT stream (reliable)",
    )
    add_quic_engine_flag(up)
    up.add_argument(
        "--no-fallback",
        dest="fallback",
        action="store_const",
        const=False,
        help="fail instead of falling back to stream mode",
    )
    up.add_argument(
        "--no-udp-offload",
        dest="udp_offload",
        action="store_const",
        const=False,
        help="one system call per QUIC packet instead of UDP GSO batches",
    )
    add_queue_flags(up)
    up.add_argument(
        "--no-tun-offload",
        dest="tun_offload",
        action="store_const",
        const=False,
        help="write every packet to the TUN device on its own instead of joining TCP segments",
    )
    up.add_argument("--tun-name", metavar="NAME", help="TUN device name [zgate-agent0]")
    up.add_argument("--tun-mtu", type=int, metavar="BYTES", help="TUN MTU [1400]")
    up.add_argument(
        "--split-tunnel",
        dest="full_tunnel",
        action="store_const",
        const=False,
        help="route only what the relay advertises (default: everything)",
    )
    up.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve /metrics and /status here; 'off' disables [127.0.0.1:9102]",
    )
    up.add_argument(
        "--no-dns",
        dest="dns",
        action="store_const",
        const=False,
        help="leave the host's resolver alone (default: resolve names through the relay "
        "while the tunnel is up: systemd-resolved per-link DNS, else a managed "
        "/etc/resolv.conf, restored on exit)",
    )
    up.add_argument(
        "--dns-domain",
        dest="dns_domains",
        action="append",
        metavar="DOMAIN",
        help="with --split-tunnel: resolve names under DOMAIN through the relay (repeatable; "
        "without any, a split-tunnel agent keeps the host's resolver)",
    )
    up.add_argument(
        "--dns-server",
        dest="dns_servers",
        action="append",
        metavar="IP",
        help="the relay's DNS address (repeatable) [10.100.0.1 / fd7a:7a67::1, the first "
        "address of the relay's default pools]",
    )
    up.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="the agent's own files: the saved /etc/resolv.conf, and ca.pem, agent.pem, "
        "agent.key when --ca/--cert/--key are not given "
        "[/var/lib/zgate/agent as root, else ~/.local/state/zgate/agent]",
    )
    up.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    up.add_argument("--log-format", choices=["json", "text"])
    st = sub.add_parser("status", help="show the state of a running agent's tunnel")
    st.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        default="127.0.0.1:9102",
        help="the agent's /status address [127.0.0.1:9102]",
    )
    st.add_argument("--json", action="store_true", help="print the raw JSON")
    why = sub.add_parser(
        "why",
        help="ask the relay, through the running agent's tunnel, why a destination is refused "
        "or allowed for this agent (exit 0 allowed, 1 denied, 2 no answer)",
    )
    why.add_argument(
        "target", metavar="TARGET", help="tcp://HOST:PORT, udp://HOST:PORT or icmp://HOST"
    )
    why.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        default="127.0.0.1:9102",
        help="the running agent's /status address, where it answers /why [127.0.0.1:9102]",
    )
    why.add_argument("--json", action="store_true", help="print the relay's raw JSON answer")
    return p


def add_liveness_flag(parser: argparse.ArgumentParser) -> None:
    """--liveness, shared by the agent and the connector."""
    parser.add_argument(
        "--liveness",
        type=float,
        metavar="SECONDS",
        help="declare the relay gone when it has not answered what the agent sent for this "
        "long (probing it with QUIC PINGs meanwhile; an idle link only sends the keepalive) "
        "and reconnect at once, to the "
        "next relay if there are several; 0 turns it off (a relay that vanished is then "
        "noticed at the QUIC idle timeout, 30 s) [2]",
    )
    parser.add_argument(
        "--liveness-probe-idle",
        dest="liveness_probe_idle",
        action="store_const",
        const=True,
        help="with liveness on, probe the relay every quarter of the deadline even while the "
        "link is idle, as before idle agents stopped probing (for benchmarks: it costs the "
        "relay several times the CPU per idle agent)",
    )


def add_quic_engine_flag(parser: argparse.ArgumentParser) -> None:
    """--quic-engine, shared by the agent and the connector."""
    parser.add_argument(
        "--quic-engine",
        choices=ENGINES,
        help="the QUIC implementation: the pure-Python reference engine, or qh3, whose QUIC "
        "core is compiled (less CPU per packet); both speak the same protocol, so either "
        f"works with any relay [{DEFAULT_ENGINE}]",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `zgate-agent`."""
    args = build_parser().parse_args(argv)
    if args.command == "status":
        return show_status(args.metrics, as_json=args.json)
    if args.command == "why":
        return show_why(args.metrics, args.target, as_json=args.json)
    return run_up("zgate-agent", AgentSettings, args, "the agent's TUN device and routes", _up)


S = TypeVar("S", bound=AgentSettings)


def run_up(
    program: str,
    settings_type: type[S],
    args: argparse.Namespace,
    needs: str,
    up: Callable[[S], Coroutine[Any, Any, int]],
) -> int:
    """`up` of an agent or a connector: flags -> settings (exit 2 with the reason when they
    or the certificate files are wrong: missing, unreadable, not a certificate or key, the key
    of another certificate, expired), logging, the privilege check, then run ``up``."""
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "command")}
    if flags.get("metrics") == "off":
        flags["metrics"] = ""
    try:
        settings = load_settings(settings_type, args.config, flags)
    except SettingsError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        return 2
    try:
        # Every way the files can be wrong, one line each, before any privileged work.
        check_identity_files(settings.cert, settings.key, ca=settings.ca)
    except PkiError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        return 2
    configure_logging(program, level=settings.log_level, json=settings.log_format == "json")
    try:
        require_net_admin(needs)
        return asyncio.run(up(settings))
    except HostError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _up(settings: AgentSettings) -> int:
    metrics = AgentMetrics()
    with TunDevice.open(
        settings.tun_name, mtu=settings.tun_mtu, offload=settings.tun_offload
    ) as device:
        agent = Agent(settings, device, metrics, manage_dns=True)
        queries = {LOCAL_PATH: why_query(agent, asyncio.get_running_loop())}
        await run_until_stopped(agent, metrics.registry, settings.metrics_address, queries)
    log.info("TUN device removed", extra={"device": settings.tun_name})
    return 0


class Runner(Protocol):
    """What run_until_stopped drives: an agent or a connector."""

    async def run(self) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


async def run_until_stopped(
    runner: Runner,
    registry: CollectorRegistry,
    metrics_address: tuple[str, int] | None,
    queries: Mapping[str, Query] | None = None,
) -> None:
    """Serve /metrics, /status (and ``queries``: the agent's /why), stop on SIGTERM/SIGINT,
    run until stopped."""
    http = None
    if metrics_address is not None:
        http = serve_status(*metrics_address, registry, runner.status, queries=queries)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop)
    try:
        await runner.run()
    finally:
        if http is not None:
            http.close()


def show_status(
    address: str, *, as_json: bool, program: str = "zgate-agent", default_port: int = 9102
) -> int:
    """Print a running agent's (or connector's) /status; 0 when its tunnel is up."""
    host, port = parse_hostport(address, default_port)
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{port}/status"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            status: dict[str, Any] = json.load(response)
    except (urllib.error.URLError, OSError) as exc:
        print(
            f"{program}: nothing answers at {url} ({exc}); is `{program} up` running?",
            file=sys.stderr,
        )
        return 1
    if as_json:
        print(json.dumps(status, indent=2))
    else:
        age = time.time() - float(status.get("since") or time.time())
        print(f"state:     {status['state']} (for {age:.0f}s)")
        print(f"relay:     {status['relay']}")
        others = [r for r in status.get("relays") or [] if r != status["relay"]]
        if others:
            print(f"others:    {', '.join(others)}")
        print(f"device:    {status['device']}")
        print(f"mode:      {status.get('mode') or '-'}")
        if status.get("quic_engine"):
            print(f"engine:    {status['quic_engine']}")
        print(f"addresses: {', '.join(status.get('addresses') or []) or '-'}")
        print(f"routes:    {', '.join(status.get('routes') or []) or '-'}")
        if isinstance(status.get("dns"), dict):
            print(f"dns:       {describe_dns(status['dns'])}")
        if status.get("last_error"):
            print(f"last error: {status['last_error']}")
    return 0 if status.get("state") == "connected" else 3


if __name__ == "__main__":
    sys.exit(main())

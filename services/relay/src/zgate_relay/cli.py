"""`serve` / `zgate-relay`: command-line flags -> RelaySettings -> run. Nothing else."""

from __future__ import annotations

import argparse
import asyncio
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from zgate_host.errors import HostError
from zgate_host.logs import configure_logging
from zgate_host.queue_flags import add_queue_flags
from zgate_host.settings import SettingsError, load_settings
from zgate_proto.engines import DEFAULT_ENGINE, ENGINES
from zgate_relay.app import run_relay
from zgate_relay.settings import RelaySettings
from zgate_relay.startup import StartupError

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
zgate relay: the hub of a zgate network. Accepts agents and connectors over QUIC
(HTTP/3, MASQUE CONNECT-IP, RFC 9484), authenticates each by its client certificate,
hands out tunnel addresses and forwards their packets (to each other, or to the
internet through its TUN device and NAT).

With no flags it listens on UDP 0.0.0.0:4433, serves metrics on 127.0.0.1:9101 and keeps
its files in its state directory (/var/lib/zgate/relay as root, else
~/.local/state/zgate/relay): the audit log, and a development PKI created there when no
--pki is given. An explicit --pki DIR must hold a PKI (`zgate pki init --dir DIR`).
Settings come from, in rising order: defaults, the YAML --config file, ZGATE_RELAY_*
environment variables (e.g. ZGATE_RELAY_POOL=10.9.0.0/16), and these flags.
With --control URL it follows a control plane instead of a policy file (docs/relay.md).
Needs root or CAP_NET_ADMIN for its TUN device and NAT (or --no-egress)."""


def build_parser() -> argparse.ArgumentParser:
    """The relay's argument parser."""
    p = argparse.ArgumentParser(
        prog="serve", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", type=Path, help="YAML file with settings (keys as the long flags)")
    p.add_argument("--listen", metavar="HOST:PORT", help="QUIC/UDP listen address [0.0.0.0:4433]")
    p.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="the relay's files: audit log, development PKI "
        "[/var/lib/zgate/relay as root, else ~/.local/state/zgate/relay]",
    )
    p.add_argument(
        "--pki",
        type=Path,
        metavar="DIR",
        help="PKI directory holding ca.pem, crl.pem, relay.pem, relay.key; must exist "
        "[STATE_DIR/pki, created as a development PKI when missing]",
    )
    p.add_argument("--pool", metavar="CIDR", help="IPv4 tunnel address pool [10.100.0.0/16]")
    p.add_argument("--pool6", metavar="CIDR", help="IPv6 tunnel address pool [fd7a:7a67::/64]")
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve /metrics here; 'off' disables [127.0.0.1:9101]",
    )
    p.add_argument("--tun-name", metavar="NAME", help="egress TUN device name [zgate0]")
    p.add_argument("--tun-mtu", type=int, metavar="BYTES", help="egress TUN MTU [1400]")
    p.add_argument(
        "--no-egress",
        dest="egress",
        action="store_const",
        const=False,
        help="no TUN device or NAT: agents only reach each other (no root needed)",
    )
    p.add_argument(
        "--no-nat",
        dest="nat",
        action="store_const",
        const=False,
        help="do not install the nftables masquerade",
    )
    p.add_argument(
        "--no-udp-offload",
        dest="udp_offload",
        action="store_const",
        const=False,
        help="one system call per QUIC packet instead of UDP GSO/GRO batches "
        "(for measurements, or a kernel that misbehaves)",
    )
    add_queue_flags(p)
    p.add_argument(
        "--no-tun-offload",
        dest="tun_offload",
        action="store_const",
        const=False,
        help="write every packet to the egress TUN device on its own instead of joining "
        "TCP segments (for measurements)",
    )
    p.add_argument(
        "--no-dev-pki",
        dest="dev_pki",
        action="store_const",
        const=False,
        help="fail instead of creating a development PKI when none exists",
    )
    p.add_argument(
        "--quic-engine",
        choices=ENGINES,
        help="the QUIC implementation: aioquic (pure Python, the reference) or qh3 (its QUIC "
        "core is compiled: less CPU per packet, about twice the tunnel's throughput); agents "
        f"on either engine can connect [{DEFAULT_ENGINE}]",
    )
    p.add_argument(
        "--max-datagram-size",
        type=int,
        metavar="BYTES",
        help="largest UDP payload QUIC sends [1452]",
    )
    p.add_argument(
        "--max-sessions",
        type=int,
        metavar="N",
        help="refuse a CONNECT-IP session past N live ones with 503 (relay full); "
        "0: no limit [5000]",
    )
    p.add_argument(
        "--max-sessions-per-client",
        type=int,
        metavar="N",
        help="refuse a client certificate's session past N live ones with 429 (connectors "
        "are exempt); 0: no limit [8]",
    )
    p.add_argument(
        "--bare-connection-timeout",
        type=float,
        metavar="SECONDS",
        help="close an authenticated connection that holds no session this long; 0: never [10]",
    )
    door = p.add_argument_group(
        "handshake floods (docs/relay.md, 'Handshake floods and Retry'); 0 turns a limit off"
    )
    door.add_argument(
        "--retry",
        choices=["auto", "always", "never"],
        help="answer new connections with a QUIC Retry (address validation) first: auto = "
        "only while under load (see the next two), always, never [auto]",
    )
    door.add_argument(
        "--retry-above-rate",
        type=float,
        metavar="PER_SECOND",
        help="auto: Retry while more new-connection attempts arrive per second [20]",
    )
    door.add_argument(
        "--retry-above-half-open",
        type=int,
        metavar="N",
        help="auto: Retry while at least N handshakes are pending [8]",
    )
    door.add_argument(
        "--max-half-open",
        type=int,
        metavar="N",
        help="pending handshakes in all, at most (~60 kB each) [1000]",
    )
    door.add_argument(
        "--max-half-open-per-source",
        type=int,
        metavar="N",
        help="pending handshakes per source IP, at most [32]",
    )
    door.add_argument(
        "--new-connections-per-source",
        type=float,
        metavar="PER_SECOND",
        help="new-connection attempts per source IP per second, bursts of twice that [20]",
    )
    door.add_argument(
        "--handshake-deadline",
        type=float,
        metavar="SECONDS",
        help="drop a connection whose handshake is not done this long after it began [10]",
    )
    door.add_argument(
        "--udp-receive-buffer",
        type=int,
        metavar="BYTES",
        help="kernel receive buffer of the QUIC socket; 0: the kernel's default [4194304]",
    )
    door.add_argument(
        "--reset-key",
        type=Path,
        metavar="FILE",
        help="key for stateless resets, created 0600 on first start and kept across "
        "restarts so agents learn of a restart at once; 'off': none [STATE_DIR/reset.key]",
    )
    p.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="access policy (YAML); reloaded on change and on SIGHUP. Without "
        "one, every authenticated client may reach everything",
    )
    p.add_argument(
        "--policy-check-interval",
        type=float,
        metavar="SECONDS",
        help="how often to look for a changed policy file; 0: only on SIGHUP or POST /reload [1]",
    )
    p.add_argument(
        "--no-enforce",
        dest="enforce",
        action="store_const",
        const=False,
        help="no flow tracking or policy enforcement (to measure their cost; never in production)",
    )
    p.add_argument(
        "--geoip",
        type=Path,
        metavar="FILE",
        help="MaxMind-format country database, needed by country rules",
    )
    p.add_argument(
        "--audit-log",
        type=Path,
        metavar="FILE",
        help="append audit records (JSON lines) here; reopened on SIGHUP; 'off' for none "
        "[STATE_DIR/audit.log]",
    )
    p.add_argument(
        "--audit-stdout",
        action="store_const",
        const=True,
        help="also write audit records to stdout",
    )
    p.add_argument(
        "--dns-upstream",
        dest="dns_upstreams",
        action="append",
        metavar="IP[:PORT]",
        help="resolver for the agents' DNS service (repeatable) [/etc/resolv.conf]",
    )
    p.add_argument(
        "--no-dns",
        dest="dns",
        action="store_const",
        const=False,
        help="do not serve DNS to agents (FQDN rules then match nothing)",
    )
    p.add_argument(
        "--connector",
        dest="connectors",
        action="append",
        metavar="ID=CIDR[,CIDR...]",
        help="let connector ID serve these private prefixes (repeatable); what a connector "
        "advertises outside them is refused and logged",
    )
    p.add_argument(
        "--site-dns",
        action="append",
        metavar="DOMAIN=IP[,IP...]",
        help="answer names under DOMAIN with these resolvers inside a private site, asked "
        "through its connectors (repeatable; e.g. corp.internal=192.168.50.10)",
    )
    p.add_argument(
        "--connector-deadline",
        type=float,
        metavar="SECONDS",
        help="fail a site over when its connector is silent this long [5]",
    )
    p.add_argument(
        "--control",
        metavar="URL",
        help="follow this control plane: it publishes the policy, revocations and "
        "connectors (excludes --policy and --connector); the relay caches its last good "
        "state in STATE_DIR and enforces it while the control plane is unreachable",
    )
    p.add_argument(
        "--control-token",
        metavar="TOKEN",
        help="the relay's API token for --control (better: --control-token-file or "
        "ZGATE_RELAY_CONTROL_TOKEN, which other users cannot read in the process list)",
    )
    p.add_argument(
        "--control-token-file",
        type=Path,
        metavar="FILE",
        help="file holding the relay's API token for --control",
    )
    p.add_argument(
        "--control-ca",
        type=Path,
        metavar="FILE",
        help="CA certificate(s) (PEM) of the control plane's HTTPS certificate [system store]",
    )
    p.add_argument(
        "--relay-name",
        metavar="NAME",
        help="name in audit records, and this relay's id on the control plane [hostname]",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["json", "text"])
    p.add_argument(
        "--debug",
        action="store_true",
        help="on a start-up error, print the traceback too (and log at debug level)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `serve` and `zgate-relay`: 0 after a clean stop, 2 for a configuration
    error (one line on stderr), 1 for anything else, 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)
    debug = bool(args.debug)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "debug")}
    if flags.get("metrics") == "off":
        flags["metrics"] = ""
    if debug and flags.get("log_level") is None:
        flags["log_level"] = "debug"
    try:
        settings = load_settings(RelaySettings, args.config, flags)
    except SettingsError as exc:
        return _fail(exc, 2, debug)
    configure_logging("zgate-relay", level=settings.log_level, json=settings.log_format == "json")
    try:
        asyncio.run(run_relay(settings))
    except (StartupError, HostError) as exc:
        return _fail(exc, 2, debug)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last resort: one line, the traceback only on request
        print(
            f"zgate-relay: unexpected error: {type(exc).__name__}: {exc} "
            f"(run with --debug for the traceback)",
            file=sys.stderr,
        )
        if debug:
            traceback.print_exc()
        return 1
    return 0


def _fail(exc: BaseException, status: int, debug: bool) -> int:
    print(f"zgate-relay: {exc}", file=sys.stderr)
    if debug:
        traceback.print_exception(exc)
    return status


if __name__ == "__main__":
    sys.exit(main())

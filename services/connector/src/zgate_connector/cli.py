"""`zgate-connector up|status`: flags -> ConnectorSettings -> run; or ask a running one."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from zgate_agent.cli import (
    add_liveness_flag,
    add_quic_engine_flag,
    run_until_stopped,
    run_up,
    show_status,
)
from zgate_agent.metrics import AgentMetrics
from zgate_connector.app import ConnectorGroup
from zgate_connector.settings import ConnectorSettings
from zgate_host.errors import HostError
from zgate_host.queue_flags import add_queue_flags
from zgate_host.sysctl import enable_forwarding
from zgate_host.tun import TunDevice

__all__ = ["main"]

log = logging.getLogger("zgate.connector")

DESCRIPTION = """\
zgate connector: publishes a private network through a zgate relay without opening any
inbound port. It dials out to the relay over QUIC with a connector certificate
(`zgate pki issue connector ID`), opens a MASQUE CONNECT-IP session, advertises the site's
prefixes, and forwards the agents' packets for them into the site (NAT to its own address),
replies back the same way. Reconnects by itself.

  zgate-connector up --relay relay.example:4433 --ca ca.pem \\
      --cert connectors/site-a.pem --key connectors/site-a.key --site 192.168.50.0/24
  zgate-connector status

The relay must allow the prefixes for this connector's id (`serve --connector
site-a=192.168.50.0/24`); it refuses and logs any other. Settings come from defaults, the
YAML --config file, ZGATE_CONNECTOR_* environment variables (e.g.
ZGATE_CONNECTOR_QUIC_ENGINE=qh3) and flags, in rising order.
`up` needs root or CAP_NET_ADMIN (TUN device, routes, forwarding, nftables)."""


def build_parser() -> argparse.ArgumentParser:
    """The connector's argument parser."""
    p = argparse.ArgumentParser(
        prog="zgate-connector",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="connect and serve the site until stopped (SIGTERM/SIGINT)")
    up.add_argument("--config", type=Path, help="YAML settings file (keys as the long flags)")
    up.add_argument(
        "--relay",
        dest="relays",
        action="append",
        metavar="HOST:PORT",
        help="a relay to keep a session with (repeatable: one session per relay; a name with "
        "several addresses gets one session per address) [127.0.0.1:4433]",
    )
    add_liveness_flag(up)
    up.add_argument(
        "--ca", type=Path, metavar="FILE", help="CA certificate of the relay [STATE_DIR/ca.pem]"
    )
    up.add_argument(
        "--cert",
        type=Path,
        metavar="FILE",
        help="this connector's certificate [STATE_DIR/connector.pem]",
    )
    up.add_argument(
        "--key",
        type=Path,
        metavar="FILE",
        help="this connector's private key [STATE_DIR/connector.key]",
    )
    up.add_argument("--server-name", metavar="NAME", help="TLS name of the relay [relay host]")
    up.add_argument(
        "--connect-timeout",
        type=float,
        metavar="SECONDS",
        help="how long one connection attempt may take before it is retried [10]",
    )
    up.add_argument(
        "--site",
        action="append",
        metavar="CIDR",
        help="a private prefix this connector serves (repeatable; at least one)",
    )
    up.add_argument(
        "--no-nat",
        dest="nat",
        action="store_const",
        const=False,
        help="do not masquerade (the site routes the agents' pool back to this host itself)",
    )
    up.add_argument("--mode", choices=["datagram", "stream"], help="packet mode [datagram]")
    add_quic_engine_flag(up)
    add_queue_flags(up)
    up.add_argument("--tun-name", metavar="NAME", help="TUN device name [zgate-conn0]")
    up.add_argument("--tun-mtu", type=int, metavar="BYTES", help="TUN MTU [1400]")
    up.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve /metrics and /status here; 'off' disables [127.0.0.1:9103]",
    )
    up.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="where the certificate files are looked for when not given "
        "[/var/lib/zgate/connector as root, else ~/.local/state/zgate/connector]",
    )
    up.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    up.add_argument("--log-format", choices=["json", "text"])
    st = sub.add_parser("status", help="show the state of a running connector's session")
    st.add_argument("--metrics", metavar="HOST:PORT", default="127.0.0.1:9103")
    st.add_argument("--json", action="store_true", help="print the raw JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `zgate-connector`."""
    args = build_parser().parse_args(argv)
    if args.command == "status":
        return show_status(
            args.metrics, as_json=args.json, program="zgate-connector", default_port=9103
        )
    needs = "the connector's TUN device, routes, forwarding and NAT"
    return run_up("zgate-connector", ConnectorSettings, args, needs, _up)


async def _up(settings: ConnectorSettings) -> int:
    metrics = AgentMetrics(prefix="zgate_connector")
    with TunDevice.open(
        settings.tun_name, mtu=settings.tun_mtu, offload=settings.tun_offload
    ) as device:
        forwarding = enable_forwarding(ipv4=True, ipv6=True)
        connector = ConnectorGroup(settings, settings.relay_addresses, device, metrics)
        try:
            await run_until_stopped(connector, metrics.registry, settings.metrics_address)
        finally:
            with contextlib.suppress(HostError):
                connector.remove_nat()
            forwarding.restore()
            log.info("NAT table removed, forwarding restored")
    log.info("TUN device removed", extra={"device": settings.tun_name})
    return 0


if __name__ == "__main__":
    sys.exit(main())

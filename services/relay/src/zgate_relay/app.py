"""Wires the relay together from its settings and runs it until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
from pathlib import Path

from zgate_host.httpd import serve_status
from zgate_host.privileges import require_net_admin
from zgate_pki import ChainVerifier, init_pki
from zgate_relay.egress import Egress
from zgate_relay.metrics import RelayMetrics
from zgate_relay.mtls import build_server_configuration
from zgate_relay.pool import AddressPool
from zgate_relay.server import RelayServer
from zgate_relay.settings import RelaySettings

__all__ = ["ensure_pki", "run_relay"]

log = logging.getLogger("zgate.relay")


def ensure_pki(settings: RelaySettings) -> None:
    """Create a development PKI in ``settings.pki`` if it has none (and that is allowed)."""
    if (settings.pki / "ca.pem").exists():
        return
    if not settings.dev_pki:
        raise SystemExit(
            f"zgate-relay: no PKI in {settings.pki} (ca.pem missing). "
            f"Create one with `zgate pki init --dir {settings.pki}`."
        )
    log.warning(
        "NO PKI FOUND: creating a DEVELOPMENT PKI (self-made CA, keys on local disk). "
        "Do not use it in production; run `zgate pki init` and keep ca.key offline.",
        extra={"pki": str(settings.pki)},
    )
    init_pki(settings.pki)


async def run_relay(settings: RelaySettings, *, ready: asyncio.Event | None = None) -> None:
    """Run a relay until it is told to stop (SIGTERM/SIGINT)."""
    if settings.egress:
        require_net_admin("the relay's egress (TUN device, forwarding, nftables NAT)")
    ensure_pki(settings)
    pki = settings.pki
    verifier = ChainVerifier(pki / "ca.pem", pki / "crl.pem")
    configuration = build_server_configuration(
        pki / "relay.pem",
        pki / "relay.key",
        max_datagram_size=settings.max_datagram_size,
        idle_timeout=settings.idle_timeout,
    )
    pool = AddressPool(settings.pool, settings.pool6)
    metrics = RelayMetrics()
    egress: Egress | None = None
    if settings.egress:
        gateways: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = [
            ipaddress.IPv4Interface(f"{pool.gateway4}/{settings.pool.prefixlen}")
        ]
        if pool.gateway6 is not None and settings.pool6 is not None:
            gateways.append(ipaddress.IPv6Interface(f"{pool.gateway6}/{settings.pool6.prefixlen}"))
        egress = Egress.open(
            name=settings.tun_name, mtu=settings.tun_mtu, gateways=gateways, nat=settings.nat
        )
    http = None
    try:
        server = RelayServer(
            configuration=configuration,
            verifier=verifier,
            pool=pool,
            metrics=metrics,
            egress=egress.device if egress else None,
            routes=settings.routes,
            datagram_queue=settings.datagram_queue,
            max_capsule_size=settings.max_capsule_size,
        )
        await server.start(*settings.listen_address)
        if settings.metrics_address is not None:
            http = serve_status(*settings.metrics_address, metrics.registry, server.status)
            log.info("metrics served", extra={"address": f"{http.url}/metrics"})
        await _serve_until_stopped(server, settings, ready)
    finally:
        if http is not None:
            http.close()
        if egress is not None:
            egress.close()


async def _serve_until_stopped(
    server: RelayServer, settings: RelaySettings, ready: asyncio.Event | None
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.check_revocations)

    async def watch_crl() -> None:
        while True:
            await asyncio.sleep(settings.crl_check_interval)
            try:
                server.check_revocations()
            except Exception:  # a bad CRL file must not stop the relay
                log.exception("CRL check failed; keeping the previous CRL")

    watcher = asyncio.create_task(watch_crl())
    if ready is not None:
        ready.set()
    log.info("relay ready", extra={"pki": str(Path(settings.pki).resolve())})
    try:
        await stop.wait()
        log.info("relay stopping")
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await server.close()

"""Wires the relay together from its settings and runs it until SIGTERM/SIGINT.

SIGHUP reloads the policy, re-reads the CA/CRL and reopens the audit log; the policy file
is also watched, and POST /reload on the metrics endpoint reloads it on request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from zgate_host.httpd import serve_status
from zgate_host.privileges import require_net_admin
from zgate_host.state import ensure_state_dir
from zgate_host.tun import PacketDevice
from zgate_pki import ChainVerifier, PkiError
from zgate_policy import PolicyError
from zgate_policy.flows import FlowTable
from zgate_proto.engines import get_engine
from zgate_proto.engines.base import QuicEngine, ServerConfig
from zgate_relay.audit import AuditLog
from zgate_relay.control import Boot, ControlPlane, load_boot
from zgate_relay.control.apply import Applier
from zgate_relay.control.client import ControlClient
from zgate_relay.control.metrics import ControlMetrics
from zgate_relay.core import RelayCore
from zgate_relay.dns import DnsError, DnsProxy, SuffixUpstreams
from zgate_relay.door import DoorLimits, FrontDoor
from zgate_relay.egress import Egress
from zgate_relay.enforce import Enforcer
from zgate_relay.fqdn import FqdnBindings
from zgate_relay.geoip import GeoIP, GeoIPError
from zgate_relay.limits import SessionLimits
from zgate_relay.metrics import RelayMetrics
from zgate_relay.policy import PolicyManager
from zgate_relay.pool import AddressPool
from zgate_relay.pump import RelayPump
from zgate_relay.reset_key import load_reset_key
from zgate_relay.settings import RelaySettings
from zgate_relay.sites import SiteRoutes
from zgate_relay.startup import StartupError, address_error, check_pki, prepare_state

__all__ = ["run_relay", "system_resolvers"]

log = logging.getLogger("zgate.relay")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def system_resolvers(path: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The nameservers of resolv.conf, minus loopback ones (unreachable from the relay's
    point of view when it forwards for agents through its own stub)."""
    servers = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    if not ipaddress.ip_address(parts[1].split("%")[0]).is_loopback:
                        servers.append(parts[1])
    return servers


async def run_relay(
    settings: RelaySettings,
    *,
    ready: asyncio.Event | None = None,
    egress_device: PacketDevice | None = None,
) -> None:
    """Run a relay until it is told to stop (SIGTERM/SIGINT).

    ``ready`` is set once it serves. ``egress_device`` replaces the egress TUN device, its
    forwarding and NAT (tests: an in-memory device, no root); the caller closes it.
    """
    own_egress = settings.egress and egress_device is None
    if own_egress:
        require_net_admin("the relay's egress (TUN device, forwarding, nftables NAT)")
    geoip = _open_geoip(settings)
    prepare_state(settings)
    check_pki(settings)
    token, boot = _control_boot(settings)
    metrics = RelayMetrics()
    try:
        audit = AuditLog(
            settings.relay_name,
            path=settings.audit_log,
            stream=sys.stdout if settings.audit_stdout else None,
        )
    except OSError as exc:
        raise StartupError(
            f"cannot open the audit log --audit-log {settings.audit_log}: "
            f"{exc.strerror or exc}; fix its folder's owner/mode or choose another file"
        ) from None
    metrics.audit_records.set_function(lambda: audit.written)
    metrics.audit_dropped.set_function(lambda: audit.dropped)
    policies = PolicyManager(
        settings.policy,
        geoip_available=geoip is not None,
        metrics=metrics,
        relay_name=settings.relay_name,
        audit=audit.emit,
    )
    try:
        policy = boot.install_policy(policies) if boot is not None else policies.load_initial()
    except PolicyError as exc:
        audit.close()
        raise StartupError(
            f"the policy --policy {settings.policy} cannot be used:\n{exc}"
        ) from None
    pool = AddressPool(settings.pool, settings.pool6)
    gateways: list[Address] = [pool.gateway4] + ([pool.gateway6] if pool.gateway6 else [])
    fqdns = FqdnBindings()
    flows = FlowTable(settings.max_flows, settings.max_flows_per_session)
    enforcer = Enforcer(
        policy,
        flows=flows,
        relay_name=settings.relay_name,
        relay_addresses=frozenset(g.packed for g in gateways),
        names_for=fqdns.names_for,
        country_of=geoip.country if geoip is not None else None,
        on_decision=lambda d: metrics.decisions.labels(d.rule_id, d.verdict).inc(),
    )
    policies.apply = lambda compiled: enforcer.set_policy(
        compiled, asyncio.get_running_loop().time()
    )
    if not settings.enforce:
        log.warning(
            "ENFORCEMENT OFF (--no-enforce): every packet is forwarded, no flow is "
            "tracked or audited; for measurements only"
        )
    pki = settings.pki
    try:
        verifier = ChainVerifier(pki / "ca.pem", pki / "crl.pem")
    except PkiError as exc:
        audit.close()
        raise StartupError(f"{exc} (PKI directory {pki})") from None
    connectors: Mapping[str, Sequence[Network]] = settings.connectors
    if boot is not None:
        boot.install_revocations(verifier)
        connectors = boot.connectors()
    try:
        door = _front_door(settings, metrics)
        engine, config = _quic_server(settings, verifier, door)
    except StartupError:
        audit.close()
        raise
    egress = _open_egress(settings, pool, connectors) if own_egress else None
    if egress is not None:
        egress_device = egress.device
    core = RelayCore(
        engine=engine,
        config=config,
        pool=pool,
        metrics=metrics,
        egress=egress_device is not None,
        routes=settings.routes,
        max_capsule_size=settings.max_capsule_size,
        enforcer=enforcer if settings.enforce else None,
        audit=audit.emit,
        relay_name=settings.relay_name,
        sites=SiteRoutes(connectors),
        own_addresses=frozenset(g.packed for g in gateways),
        connector_deadline=settings.connector_deadline,
        door=door,
        limits=SessionLimits(
            max_sessions=settings.max_sessions,
            max_sessions_per_client=settings.max_sessions_per_client,
            bare_connection_timeout=settings.bare_connection_timeout,
        ),
    )
    server = RelayPump(
        core,
        egress_device,
        udp_offload=settings.udp_offload,
        queue=settings.queue,
        aqm=settings.aqm_config(),
        udp_receive_buffer=settings.udp_receive_buffer,
    )
    dns: DnsProxy | None = None
    http = None
    control: ControlPlane | None = None
    try:
        try:
            await server.start(*settings.listen_address)
        except OSError as exc:
            raise address_error(exc, "UDP", "--listen", settings.listen) from None
        if settings.dns:
            dns = await _start_dns(settings, server, fqdns, gateways, metrics)
        loop = asyncio.get_running_loop()
        status: Callable[[], dict[str, Any]] = server.status
        if boot is not None:
            control = _control_plane(settings, token, boot, policies, verifier, server, metrics)
            status = _with_control(server.status, control)

        def reload_now() -> dict[str, object]:
            future = asyncio.run_coroutine_threadsafe(policies.reload("reload"), loop)
            return future.result(timeout=60).as_dict()

        if settings.metrics_address is not None:
            try:
                http = serve_status(
                    *settings.metrics_address,
                    metrics.registry,
                    status,
                    actions={"/reload": reload_now},
                )
            except OSError as exc:
                raise address_error(
                    exc, "metrics address", "--metrics", str(settings.metrics)
                ) from None
            log.info("metrics served", extra={"address": f"{http.url}/metrics"})
        background = control.tasks() if control is not None else []
        await _serve_until_stopped(server, settings, policies, audit, fqdns, ready, background)
    finally:
        if control is not None:
            await control.aclose()
        if http is not None:
            http.close()
        if dns is not None:
            await dns.close()
        if egress is not None:
            egress.close()
        if geoip is not None:
            geoip.close()
        audit.close(timeout=5)


def _front_door(settings: RelaySettings, metrics: RelayMetrics) -> FrontDoor:
    """The admission checks for new connections, and the stateless reset key."""
    reset_key = None
    if settings.reset_key is not None:
        if settings.reset_key.parent == settings.state_dir:
            ensure_state_dir(settings.state_dir)
        reset_key = load_reset_key(settings.reset_key)
    limits = DoorLimits(
        retry=settings.retry,
        retry_above_rate=settings.retry_above_rate,
        retry_above_half_open=settings.retry_above_half_open,
        max_half_open=settings.max_half_open,
        max_half_open_per_source=settings.max_half_open_per_source,
        new_per_source=settings.new_connections_per_source,
        handshake_deadline=settings.handshake_deadline,
    )
    door = FrontDoor(
        limits,
        drops=metrics.handshake_drops,
        outcomes=metrics.front_door,
        reset_key=reset_key,
    )
    metrics.half_open.set_function(lambda: door.half_open)
    return door


def _quic_server(
    settings: RelaySettings, verifier: ChainVerifier, door: FrontDoor
) -> tuple[QuicEngine, ServerConfig]:
    """The chosen QUIC engine and the relay's server configuration, its certificate
    loaded once (a certificate the engine cannot use is a start-up error)."""
    try:
        engine = get_engine(settings.quic_engine)
    except ImportError as exc:
        raise StartupError(f"--quic-engine {settings.quic_engine} cannot be used: {exc}") from None
    pki = settings.pki
    config = ServerConfig(
        cert_file=pki / "relay.pem",
        key_file=pki / "relay.key",
        verifier=verifier,
        idle_timeout=settings.idle_timeout,
        max_datagram_size=settings.max_datagram_size,
        datagram_queue=settings.datagram_queue,
        datagram_discipline=settings.queue,
        aqm=settings.aqm_config(),
        reset_token=door.reset_token_of if door.reset_key is not None else None,
    )
    try:
        engine.server_context(config)
    except PkiError as exc:
        raise StartupError(f"{exc} (PKI directory {pki})") from None
    log.info("QUIC engine", extra={"engine": engine.name, "version": engine.version})
    return engine, config


def _open_geoip(settings: RelaySettings) -> GeoIP | None:
    if settings.geoip is None:
        return None
    try:
        geoip = GeoIP(settings.geoip)
    except GeoIPError as exc:
        raise StartupError(
            f"--geoip {exc.path}: {exc.detail}; give a MaxMind-format country database "
            f"(GeoLite2-Country.mmdb or GeoIP2-Country/City)"
        ) from None
    kind = geoip.database_type
    if "country" not in kind.lower() and "city" not in kind.lower():
        geoip.close()
        raise StartupError(
            f"--geoip {settings.geoip} is a {kind!r} database, which has no countries; "
            f"give a Country or City database"
        )
    log.info("GeoIP database", extra={"path": str(settings.geoip), "type": kind})
    return geoip


def _control_boot(settings: RelaySettings) -> tuple[str, Boot | None]:
    """The control-plane token and the cached state to start from (when following one)."""
    if settings.control is None:
        return "", None
    try:
        token = settings.control_token_value()
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    ensure_state_dir(settings.state_dir)  # the cache and the shipping position live there
    return token, load_boot(settings.state_dir)


def _control_plane(
    settings: RelaySettings,
    token: str,
    boot: Boot,
    policies: PolicyManager,
    verifier: ChainVerifier,
    server: RelayPump,
    metrics: RelayMetrics,
) -> ControlPlane:
    assert settings.control is not None
    core = server.core
    sites = core.sites
    assert sites is not None

    def connectors_changed() -> None:
        for ident, state in sites.connectors().items():
            metrics.connector_sessions.labels(ident).set(state.sessions)
            metrics.connector_prefixes.labels(ident).set(len(state.prefixes))

    applier = Applier(
        policies=policies,
        verifier=verifier,
        end_revoked=server.check_revocations,
        sites=sites,
        connectors_changed=connectors_changed,
        end_session=server.end_session,
    )
    log.info("following the control plane", extra={"url": settings.control})
    return ControlPlane(
        client=ControlClient(
            settings.control, settings.relay_name, token, ca_file=settings.control_ca
        ),
        boot=boot,
        applier=applier,
        policies=policies,
        metrics=ControlMetrics(metrics.registry),
        status=server.status,
        state_dir=settings.state_dir,
        audit_log=settings.audit_log,
        address=settings.listen,
        wait=settings.control_wait,
        heartbeat_interval=settings.control_heartbeat_interval,
    )


def _with_control(
    status: Callable[[], dict[str, Any]], control: ControlPlane
) -> Callable[[], dict[str, Any]]:
    def combined() -> dict[str, Any]:
        return {**status(), "control": control.status()}

    return combined


def _open_egress(
    settings: RelaySettings, pool: AddressPool, connectors: Mapping[str, Sequence[Network]]
) -> Egress:
    gateways: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = [
        ipaddress.IPv4Interface(f"{pool.gateway4}/{settings.pool.prefixlen}")
    ]
    if pool.gateway6 is not None and settings.pool6 is not None:
        gateways.append(ipaddress.IPv6Interface(f"{pool.gateway6}/{settings.pool6.prefixlen}"))
    return Egress.open(
        name=settings.tun_name,
        mtu=settings.tun_mtu,
        gateways=gateways,
        nat=settings.nat,
        offload=settings.tun_offload,
        site_routes=[p for prefixes in connectors.values() for p in prefixes],
    )


async def _start_dns(
    settings: RelaySettings,
    server: RelayPump,
    fqdns: FqdnBindings,
    gateways: list[Address],
    metrics: RelayMetrics,
) -> DnsProxy | None:
    upstreams = settings.dns_upstreams
    if upstreams is None:
        upstreams = system_resolvers()
    if not upstreams:
        log.warning(
            "no DNS upstream (none given, none usable in /etc/resolv.conf): agents "
            "get no DNS service and FQDN rules match nothing; set --dns-upstream"
        )
        return None
    loop = asyncio.get_running_loop()

    def on_answer(client: Address, name: str, addresses: list[Address], ttl: int) -> None:
        session = server.router.session_for(client.packed)
        if session is not None:
            fqdns.record(session.identity.ident, name, addresses, ttl, loop.time())

    addresses = [str(g) for g in gateways] if settings.egress else ["127.0.0.1"]
    try:
        choose = SuffixUpstreams(upstreams, settings.site_dns).choose_upstream
        proxy = DnsProxy(choose_upstream=choose, on_answer=on_answer, freebind=True)
        port = await proxy.start(addresses, settings.dns_port)
    except DnsError as exc:
        hint = (
            " (another relay with the same --pool on this machine?): give this one another "
            "--pool, or --no-dns"
            if "in use" in str(exc)
            else ": check --dns-upstream and --site-dns, or run with --no-dns"
        )
        raise StartupError(f"{exc}{hint}") from None
    metrics.watch_dns(proxy.stats.as_dict)
    log.info(
        "DNS service for agents",
        extra={
            "addresses": addresses,
            "port": port,
            "upstreams": upstreams,
            "site_domains": settings.site_dns,
        },
    )
    return proxy


async def _serve_until_stopped(
    server: RelayPump,
    settings: RelaySettings,
    policies: PolicyManager,
    audit: AuditLog,
    fqdns: FqdnBindings,
    ready: asyncio.Event | None,
    background: Sequence[Callable[[], Awaitable[object]]] = (),
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    tasks: set[asyncio.Task[object]] = set()

    def spawn(coro: Awaitable[object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def on_sighup() -> None:
        log.info("SIGHUP: reloading the policy and the CA/CRL, reopening the audit log")
        audit.reopen()
        server.check_revocations()
        spawn(policies.reload("sighup"))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_sighup)

    async def every(interval: float, work: Callable[[], object], what: str) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                result = work()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # housekeeping must never stop the relay
                log.exception(f"{what} failed; will try again")

    async def watch_policy() -> None:
        if policies.file_changed():
            await policies.reload("file")

    def housekeeping() -> None:
        server.tick()
        fqdns.expire(loop.time())

    spawn(every(settings.crl_check_interval, server.check_revocations, "CRL check"))
    if settings.policy_check_interval > 0:
        spawn(every(settings.policy_check_interval, watch_policy, "policy file check"))
    spawn(every(1.0, housekeeping, "flow expiry"))
    for work in background:
        spawn(work())
    if ready is not None:
        ready.set()
    log.info(
        "relay ready",
        extra={
            "pki": str(Path(settings.pki).resolve()),
            "state_dir": str(settings.state_dir),
            "audit_log": str(settings.audit_log) if settings.audit_log else None,
        },
    )
    try:
        await stop.wait()
        log.info("relay stopping")
    finally:
        for task in list(tasks):
            task.cancel()
        for task in list(tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await server.close()

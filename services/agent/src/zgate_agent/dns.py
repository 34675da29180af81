"""The agent's name resolution through the tunnel: which servers and domains, when to
configure and restore the host's resolver (zgate_host.resolver does the work), and what
`zgate-agent status` says about it. Failures are one warning line; the tunnel runs on."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from zgate_agent.link import TunnelInfo
from zgate_agent.settings import AgentSettings
from zgate_host.resolver import HostResolver, Method, ResolverError, relay_dns_servers
from zgate_proto.capsules import IPAddressRange

__all__ = ["AgentDns"]

log = logging.getLogger("zgate.agent.dns")

OPT_OUT = "--no-dns (ZGATE_AGENT_DNS=false)"


class AgentDns:
    """Points the host's resolver at the relay while the tunnel is up."""

    def __init__(
        self, settings: AgentSettings, device: str, resolver: HostResolver | None = None
    ) -> None:
        self.settings = settings
        self.device = device
        self.resolver = resolver or HostResolver(state_dir=settings.state_dir)
        self._state = "pending" if settings.dns else "off"
        self._reason: str | None = None if settings.dns else "--no-dns"
        if settings.dns and not settings.full_tunnel and not settings.dns_domains:
            self._state = "off"
            self._reason = "split tunnel without --dns-domain: the host's resolver is kept"

    @property
    def wanted(self) -> bool:
        """Whether the resolver is to be pointed at the relay at all."""
        return self._state != "off"

    @property
    def active(self) -> bool:
        """Whether the host's resolver points at the relay now."""
        return self._state == "on"

    def recover(self) -> None:
        """At start, whatever the settings: restore what a crashed agent left behind."""
        try:
            self.resolver.recover()
        except Exception as exc:  # one line, never a traceback: the tunnel comes first
            log.warning(f"DNS: could not recover the resolver configuration: {_why(exc)}")

    def servers(self, info: TunnelInfo) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """The relay's DNS addresses for this tunnel (only families the tunnel carries)."""
        families = {a.version for a in info.addresses}
        found = relay_dns_servers(info.addresses, self.settings.dns_servers)
        return [s for s in found if s.version in families]

    def extra_routes(self, info: TunnelInfo) -> list[IPAddressRange]:
        """Host routes to the relay's DNS addresses, for a split tunnel whose advertised
        routes may not cover them."""
        if not self.wanted or self.settings.full_tunnel:
            return []
        return [IPAddressRange(s, s, 0) for s in self.servers(info)]

    def tunnel_up(self, info: TunnelInfo) -> None:
        """Configure the resolver for the tunnel just opened (again on each reconnect)."""
        if not self.wanted:
            return
        servers = self.servers(info)
        if not servers:
            self._fail(
                "the relay's DNS address is unknown for the addresses it assigned "
                f"({', '.join(str(a) for a in info.addresses)}); give it with --dns-server"
            )
            return
        domains = [] if self.settings.full_tunnel else list(self.settings.dns_domains)
        try:
            method = self.resolver.apply(
                self.device, servers, domains, fallback=not self.settings.full_tunnel
            )
        except Exception as exc:
            self._fail(_why(exc))
            return
        if method is Method.RESOLV_CONF and domains and self._state != "on":
            log.info(
                "DNS: resolv.conf cannot route names by domain: every name goes to the relay "
                "first, the host's own servers are asked only when it does not answer",
                extra={"domains": domains},
            )
        self._state, self._reason = "on", None

    def restore(self) -> None:
        """Put the host's resolver back (on exit)."""
        try:
            self.resolver.restore()
        except Exception as exc:
            log.warning(f"DNS: could not restore the resolver configuration: {_why(exc)}")

    def _fail(self, reason: str) -> None:
        self._state, self._reason = "failed", reason
        log.warning(
            f"DNS not configured: {reason}; names resolve as before. Turn this off with {OPT_OUT}"
        )

    def status(self) -> dict[str, Any]:
        """For /status: state (on, off, pending, failed), why, and the resolver's details."""
        status: dict[str, Any] = {"state": self._state, "reason": self._reason}
        status.update(self.resolver.status())
        return status


def _why(exc: Exception) -> str:
    """A ResolverError says it all; anything else (a bug) at least names its type."""
    return str(exc) if isinstance(exc, ResolverError) else f"{type(exc).__name__}: {exc}"


def describe(dns: dict[str, Any]) -> str:
    """One line for `zgate-agent status`."""
    state = dns.get("state")
    if state == "on":
        servers = ", ".join(dns.get("servers") or []) or "-"
        where = dns.get("where") or "-"
        method = dns.get("method")
        if method == Method.RESOLVED.value:
            text = f"{servers} via {where}"
        else:
            text = f"{servers} via resolv.conf: {where}"
        domains = dns.get("domains") or []
        return text + (f" for {', '.join(domains)}" if domains else "")
    if state == "off":
        return f"off ({dns.get('reason')})" if dns.get("reason") else "off"
    if state == "pending":
        return "waiting for the tunnel"
    return f"not configured: {dns.get('reason')}"

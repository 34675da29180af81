"""The relay's Prometheus metrics, created up front (labelled series start at zero)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["DIRECTIONS", "DROP_REASONS", "REFUSAL_REASONS", "RelayMetrics"]

#: Packet directions as seen by the relay.
DIRECTIONS = ("from_agent", "to_agent", "to_egress", "from_egress")

#: Why a packet was dropped. A bounded set: every drop is counted under one of these.
DROP_REASONS = (
    "spoofed_source",  # BCP 38: source is not the session's assigned address
    "malformed_packet",  # not a parseable IPv4/IPv6 packet
    "unknown_context",  # HTTP datagram with a context ID other than 0
    "unknown_stream",  # HTTP datagram for a stream that is no CONNECT-IP session
    "no_session",  # packet from egress to an address no session holds
    "multicast",  # multicast from egress (the kernel's MLD/IGMP on the TUN device)
    "too_big",  # larger than the session's datagram path allows (ICMP sent back)
    "queue_full",  # the session's datagram send queue is full
    "ttl_expired",  # TTL / hop limit reached zero
    "session_closed",  # the target session is closing
    "egress_write",  # the kernel refused the packet on the TUN device
)

#: Why a handshake or a request was refused.
REFUSAL_REASONS = (
    "no_certificate",
    "unknown_ca",
    "expired",
    "revoked",
    "bad_certificate",
    "tls_version",
    "handshake_failed",
    "bad_request",
    "pool_exhausted",
)


class RelayMetrics:
    """All relay metrics on one registry (a registry per relay keeps tests independent)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.sessions = Gauge("zgate_relay_sessions", "Live CONNECT-IP sessions.", registry=r)
        self.sessions_total = Counter(
            "zgate_relay_sessions_opened", "CONNECT-IP sessions opened.", registry=r
        )
        packets = Counter(
            "zgate_relay_packets", "IP packets moved, by direction.", ["direction"], registry=r
        )
        bytes_ = Counter(
            "zgate_relay_bytes", "IP bytes moved, by direction.", ["direction"], registry=r
        )
        self.packets = {d: packets.labels(d) for d in DIRECTIONS}
        self.bytes = {d: bytes_.labels(d) for d in DIRECTIONS}
        drops = Counter("zgate_relay_drops", "Packets dropped, by reason.", ["reason"], registry=r)
        self.drops = {reason: drops.labels(reason) for reason in DROP_REASONS}
        refusals = Counter(
            "zgate_relay_handshake_refusals",
            "Handshakes and requests refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.refusals = {reason: refusals.labels(reason) for reason in REFUSAL_REASONS}
        self.session_errors = Counter(
            "zgate_relay_session_errors",
            "Sessions ended because the peer sent malformed capsules or frames.",
            registry=r,
        )
        self.queue_depth = Gauge(
            "zgate_relay_datagram_queue_depth",
            "Datagrams waiting in all sessions' QUIC send queues.",
            registry=r,
        )
        self.crl_reloads = Counter(
            "zgate_relay_crl_reloads", "Times the CA/CRL files were re-read.", registry=r
        )

    def watch_queue_depth(self, depth: Callable[[], float]) -> None:
        """Compute the queue depth gauge at scrape time instead of per packet."""
        self.queue_depth.set_function(depth)

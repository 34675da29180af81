"""The agent's Prometheus metrics, created up front."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from zgate_agent.failures import LOSS_CAUSES
from zgate_host.counters import CounterFamilies

__all__ = ["AgentMetrics"]

DIRECTIONS = ("to_relay", "from_relay")
DROP_REASONS = (
    "not_connected",
    "too_big",
    "queue_full",
    "queue_aqm",  # fq-codel: CoDel dropped it from a standing queue toward the relay
    "queue_overflow",  # fq-codel: the queue was full; the fattest flow lost its oldest
    "unknown_context",
    "unknown_stream",
    "malformed_datagram",
    "tun_write",
)


class AgentMetrics:
    """All agent metrics on one registry. ``prefix`` names them (a connector exports the
    same set as ``zgate_connector_*``)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, prefix: str = "zgate_agent"
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connected = Gauge(f"{prefix}_connected", "1 while the tunnel is up.", registry=r)
        self.reconnects = Counter(
            f"{prefix}_reconnects", "Connection attempts after the first.", registry=r
        )
        self.losses = Counter(
            f"{prefix}_tunnel_losses",
            "Tunnels lost and attempts failed, by cause: liveness (nothing heard from the "
            "relay for --liveness), reset, closed (by the relay), refused, idle_timeout, "
            "unreachable (no answer), timeout, error.",
            ["cause"],
            registry=r,
        )
        for cause in LOSS_CAUSES:
            self.losses.labels(cause)
        self.relay = Gauge(
            f"{prefix}_relay",
            "1 for each relay (HOST:PORT as given, and its address) a tunnel is up with now.",
            ["relay", "address"],
            registry=r,
        )
        self.reconnect_seconds = Histogram(
            f"{prefix}_reconnect_seconds",
            "From a tunnel lost to the next one up, seconds.",
            buckets=(0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 20, 30, 60, 120, 300),
            registry=r,
        )
        # Per-packet counts: plain integers read at scrape time (see zgate_host.counters).
        counts = CounterFamilies()
        self.packets = counts.family(
            f"{prefix}_packets", "IP packets, by direction.", "direction", DIRECTIONS
        )
        self.bytes = counts.family(
            f"{prefix}_bytes", "IP bytes, by direction.", "direction", DIRECTIONS
        )
        self.drops = counts.family(
            f"{prefix}_drops", "Packets dropped, by reason.", "reason", DROP_REASONS
        )
        r.register(counts)

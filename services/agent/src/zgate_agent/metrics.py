"""The agent's Prometheus metrics, created up front."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from zgate_host.counters import CounterFamilies

__all__ = ["AgentMetrics"]

DIRECTIONS = ("to_relay", "from_relay")
DROP_REASONS = ("not_connected", "too_big", "queue_full", "unknown_context", "tun_write")


class AgentMetrics:
    """All agent metrics on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connected = Gauge("zgate_agent_connected", "1 while the tunnel is up.", registry=r)
        self.reconnects = Counter(
            "zgate_agent_reconnects", "Connection attempts after the first.", registry=r
        )
        # Per-packet counts: plain integers read at scrape time (see zgate_host.counters).
        counts = CounterFamilies()
        self.packets = counts.family(
            "zgate_agent_packets", "IP packets, by direction.", "direction", DIRECTIONS
        )
        self.bytes = counts.family(
            "zgate_agent_bytes", "IP bytes, by direction.", "direction", DIRECTIONS
        )
        self.drops = counts.family(
            "zgate_agent_drops", "Packets dropped, by reason.", "reason", DROP_REASONS
        )
        r.register(counts)

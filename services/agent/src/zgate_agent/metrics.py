"""The agent's Prometheus metrics, created up front."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

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
        packets = Counter(
            "zgate_agent_packets", "IP packets, by direction.", ["direction"], registry=r
        )
        bytes_ = Counter("zgate_agent_bytes", "IP bytes, by direction.", ["direction"], registry=r)
        self.packets = {d: packets.labels(d) for d in DIRECTIONS}
        self.bytes = {d: bytes_.labels(d) for d in DIRECTIONS}
        drops = Counter("zgate_agent_drops", "Packets dropped, by reason.", ["reason"], registry=r)
        self.drops = {reason: drops.labels(reason) for reason in DROP_REASONS}

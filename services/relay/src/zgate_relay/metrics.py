"""The relay's Prometheus metrics, created up front (labelled series start at zero)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from zgate_host.counters import CounterFamilies
from zgate_pki import REFUSAL_REASONS as CERTIFICATE_REFUSALS
from zgate_relay.door import DOOR_DROP_REASONS, DOOR_OUTCOMES

__all__ = [
    "DIRECTIONS",
    "DNS_OUTCOMES",
    "DROP_REASONS",
    "REFUSAL_REASONS",
    "WHY_RESULTS",
    "RelayMetrics",
]

#: How DNS queries from agents ended.
DNS_OUTCOMES = ("answered", "failed", "malformed", "overloaded", "refused")

#: Packet directions as seen by the relay.
DIRECTIONS = ("from_agent", "to_agent", "to_egress", "from_egress")

#: Why a packet was dropped. A bounded set: every drop is counted under one of these.
DROP_REASONS = (
    "spoofed_source",  # BCP 38: source is not the session's assigned address
    "malformed_packet",  # not a parseable IPv4/IPv6 packet
    "unknown_context",  # HTTP datagram with a context ID other than 0
    "unknown_stream",  # HTTP datagram for a stream that is no CONNECT-IP session
    "malformed_datagram",  # an HTTP datagram whose context ID cannot be read
    "no_session",  # packet from egress to an address no session holds
    "no_connector",  # to a private site that no live connector serves now
    "multicast",  # multicast from egress (the kernel's MLD/IGMP on the TUN device)
    "too_big",  # larger than the session's datagram path allows (ICMP sent back)
    "queue_full",  # the session's datagram send queue is full
    "queue_aqm",  # fq-codel: CoDel dropped it from a standing queue (ingress or to an agent)
    "queue_overflow",  # fq-codel: a queue was full; its fattest flow lost its oldest packet
    "ttl_expired",  # TTL / hop limit reached zero
    "session_closed",  # the target session is closing
    "egress_write",  # the kernel refused the packet on the TUN device
    "policy_denied",  # the flow's policy verdict is deny
    "no_flow",  # towards an agent, but no reply to a flow the policy allowed
    "flow_table_full",  # a new flow beyond the flow table's bounds
)

#: Why a handshake or a request was refused: a certificate's reasons (zgate_pki's), the
#: engines' two other handshake reasons (see ``RefusalCallback``), then the relay's own.
REFUSAL_REASONS = (
    *CERTIFICATE_REFUSALS,
    "tls_version",
    "handshake_failed",
    "bad_request",
    "pool_exhausted",
    "relay_full",  # --max-sessions reached: 503
    "client_limit",  # --max-sessions-per-client reached for that identity: 429
    "bare_connection",  # closed: authenticated, yet no session within --bare-connection-timeout
)


#: How an agent's `why` request ended: the verdict it was told, or why it got none.
WHY_RESULTS = (
    "allow",
    "deny",
    "bad_target",
    "not_found",
    "bad_method",
    "no_identity",
    "rate_limited",
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
        # Per-packet counts are plain integers, exported at scrape time: a prometheus-client
        # Counter.inc() takes a lock and costs about 0.3 us, several times per packet.
        counts = CounterFamilies()
        self.packets = counts.family(
            "zgate_relay_packets", "IP packets moved, by direction.", "direction", DIRECTIONS
        )
        self.bytes = counts.family(
            "zgate_relay_bytes", "IP bytes moved, by direction.", "direction", DIRECTIONS
        )
        self.drops = counts.family(
            "zgate_relay_drops", "Packets dropped, by reason.", "reason", DROP_REASONS
        )
        # The front door (zgate_relay.door): new-connection attempts turned away before they
        # had any state, and what it did otherwise; counted per datagram, hence plain ints.
        self.handshake_drops = counts.family(
            "zgate_relay_handshake_drops",
            "Connection attempts dropped before any state (no answer), by reason.",
            "reason",
            DOOR_DROP_REASONS,
        )
        self.front_door = counts.family(
            "zgate_relay_front_door",
            "New-connection datagrams: connections made, Retry packets sent, Retry tokens "
            "validated, stateless resets sent.",
            "outcome",
            DOOR_OUTCOMES,
        )
        r.register(counts)
        self.half_open = Gauge(
            "zgate_relay_half_open_connections",
            "Connections whose handshake has not completed yet.",
            registry=r,
        )
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
        # Connectors (private sites).
        self.connector_sessions = Gauge(
            "zgate_relay_connector_sessions",
            "Live sessions of each connector id with routes installed (0: its site is down).",
            ["connector"],
            registry=r,
        )
        self.connector_prefixes = Gauge(
            "zgate_relay_connector_prefixes",
            "Prefixes installed for each connector id.",
            ["connector"],
            registry=r,
        )
        self.route_refusals = Counter(
            "zgate_relay_route_refusals",
            "Advertised prefixes refused (outside what the connector id may serve).",
            ["connector"],
            registry=r,
        )
        self.crl_reloads = Counter(
            "zgate_relay_crl_reloads", "Times the CA/CRL files were re-read.", registry=r
        )

        # Access control.
        self.flows = Gauge("zgate_relay_flows", "Flows in the flow table.", registry=r)
        self.policy_version = Gauge(
            "zgate_policy_version_info",
            "The running policy version (value 1).",
            ["version"],
            registry=r,
        )
        reloads = Counter(
            "zgate_policy_reloads", "Policy loads, by result.", ["result"], registry=r
        )
        self.policy_reloads = {result: reloads.labels(result) for result in ("ok", "refused")}
        self.policy_last_reload_ok = Gauge(
            "zgate_policy_last_reload_ok",
            "1 if the last policy load succeeded, else 0.",
            registry=r,
        )
        self.decisions = Counter(
            "zgate_policy_decisions",
            "Flow decisions, by deciding rule and verdict.",
            ["rule", "verdict"],
            registry=r,
        )
        why = Counter(
            "zgate_relay_why_requests",
            "Agents' why-requests (GET /.well-known/zgate/why), by result.",
            ["result"],
            registry=r,
        )
        self.why_requests = {result: why.labels(result) for result in WHY_RESULTS}
        self.audit_records = Gauge(
            "zgate_relay_audit_records_written", "Audit records written since start.", registry=r
        )
        self.audit_dropped = Gauge(
            "zgate_relay_audit_records_dropped",
            "Audit records lost because the writer fell behind.",
            registry=r,
        )

    def watch_rules(self, rule_ids: Iterable[str]) -> None:
        """Create the decision series of a policy's rules at zero (bounded: one per rule)."""
        for rule in rule_ids:
            for verdict in ("allow", "deny"):
                self.decisions.labels(rule, verdict)

    def watch_dns(self, stats: Callable[[], Mapping[str, int]]) -> None:
        """Export the DNS service's own counters (read at scrape time)."""
        self.registry.register(_DnsCollector(stats))

    def watch_queue_depth(self, depth: Callable[[], float]) -> None:
        """Compute the queue depth gauge at scrape time instead of per packet."""
        self.queue_depth.set_function(depth)


class _DnsCollector(Collector):
    """``zgate_relay_dns_queries_total{outcome}`` from the DNS proxy's counters."""

    def __init__(self, stats: Callable[[], Mapping[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "zgate_relay_dns_queries", "DNS queries from agents, by outcome.", labels=["outcome"]
        )
        stats = self._stats()
        for outcome, key in _DNS_STAT_KEYS.items():
            family.add_metric([outcome], float(stats.get(key, 0)))
        yield family


_DNS_STAT_KEYS = {
    "answered": "answers",
    "failed": "failures",
    "malformed": "malformed",
    "overloaded": "overloaded",
    "refused": "refused",
}

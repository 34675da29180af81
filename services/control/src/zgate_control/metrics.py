"""The control plane's Prometheus metrics (``zgate_control_*``), one registry per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ControlMetrics"]


class ControlMetrics:
    """Every metric the control plane exports. Labels have bounded values only (route
    templates, status classes, kinds), never a client id."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "zgate_control_http_requests_total",
            "API requests answered, by route template, method and status class",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "zgate_control_http_request_duration_seconds",
            "Time to answer an API request (long polls excluded)",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.up = Gauge("zgate_control_up", "1 while the control plane serves", registry=r)
        self.changes = Counter(
            "zgate_control_changes_total",
            "Entries appended to the change log, by kind",
            ["kind"],
            registry=r,
        )
        for kind in ("policy", "revocation", "connectors", "session.end"):
            self.changes.labels(kind)
        self.relays_waiting = Gauge(
            "zgate_control_relay_streams",
            "Relay change streams (long polls) held open by this process",
            registry=r,
        )
        self.audit_records = Counter(
            "zgate_control_audit_records_total",
            "Audit records received from relays, by outcome",
            ["outcome"],
            registry=r,
        )
        for outcome in ("stored", "duplicate", "chain_broken", "rejected"):
            self.audit_records.labels(outcome)
        self.policy_publications = Counter(
            "zgate_control_policy_publications_total",
            "Policy versions put in force, by kind (publish, rollback)",
            ["kind"],
            registry=r,
        )
        for kind in ("publish", "rollback"):
            self.policy_publications.labels(kind)
        self.impact_seconds = Histogram(
            "zgate_control_policy_impact_duration_seconds",
            "Time to replay the recorded flows against a candidate policy",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )

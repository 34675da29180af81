"""zgate_relay_control_* metrics, on the relay's registry, created up front at zero."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["APPLY_ERROR_KINDS", "ControlMetrics"]

#: What could not be applied: a change of each kind, or a response that made no sense.
APPLY_ERROR_KINDS = ("policy", "revocation", "connectors", "response")


class ControlMetrics:
    """How the relay follows its control plane."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.connected = Gauge(
            "zgate_relay_control_connected",
            "1 while the last call to the control plane succeeded, else 0.",
            registry=r,
        )
        self.applied_seq = Gauge(
            "zgate_relay_control_applied_seq",
            "The change-log position applied (and acknowledged).",
            registry=r,
        )
        self.last_apply = Gauge(
            "zgate_relay_control_last_apply_timestamp_seconds",
            "When a change from the control plane was last applied (Unix time).",
            registry=r,
        )
        self.using_cache = Gauge(
            "zgate_relay_control_using_cache",
            "1 while enforcing the cached snapshot without having reached the control "
            "plane since start.",
            registry=r,
        )
        errors = Counter(
            "zgate_relay_control_apply_errors",
            "Changes (or responses) from the control plane that could not be applied, by kind.",
            ["kind"],
            registry=r,
        )
        self.apply_errors = {kind: errors.labels(kind) for kind in APPLY_ERROR_KINDS}
        self.audit_shipped = Counter(
            "zgate_relay_control_audit_shipped",
            "Audit records the control plane accepted (duplicates included).",
            registry=r,
        )
        self.audit_ship_errors = Counter(
            "zgate_relay_control_audit_ship_errors",
            "Audit batches that could not be shipped (to be sent again).",
            registry=r,
        )

"""Prometheus counters for the packet path, kept as plain integers.

A prometheus-client ``Counter.inc()`` takes a lock and costs about 0.3 µs; the packet
path counts several things per packet. Here each labelled family is a dict of ints the
daemon increments directly, and the registry reads them at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CounterFamilies"]


class CounterFamilies(Collector):
    """Labelled counter families backed by dicts of ints (register it on a registry)."""

    def __init__(self) -> None:
        self._families: list[tuple[str, str, str, dict[str, int]]] = []

    def family(
        self, name: str, documentation: str, label: str, keys: Iterable[str]
    ) -> dict[str, int]:
        """A new family ``<name>_total{<label>=key}``, every key starting at 0; the caller
        increments the returned dict's values."""
        counts = dict.fromkeys(keys, 0)
        self._families.append((name, documentation, label, counts))
        return counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        """The families as they are now (called by the registry at scrape time)."""
        for name, documentation, label, counts in self._families:
            family = CounterMetricFamily(name, documentation, labels=[label])
            for key, value in list(counts.items()):
                family.add_metric([key], float(value))
            yield family

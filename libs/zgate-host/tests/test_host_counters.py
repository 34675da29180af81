"""Counter families backed by plain integers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from zgate_host.counters import CounterFamilies


def test_families_are_exported_with_every_key_from_zero() -> None:
    registry = CollectorRegistry()
    counts = CounterFamilies()
    drops = counts.family("zgate_test_drops", "Drops.", "reason", ["a", "b"])
    registry.register(counts)
    drops["a"] += 3
    text = generate_latest(registry).decode()
    assert 'zgate_test_drops_total{reason="a"} 3.0' in text
    assert 'zgate_test_drops_total{reason="b"} 0.0' in text
    assert (
        "# TYPE zgate_test_drops_total counter" in text or "# TYPE zgate_test_drops counter" in text
    )

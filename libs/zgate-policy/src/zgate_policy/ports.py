"""Protocol/port specs (``tcp/443``, ``udp/5000-5100``, ``icmp``, ``any``) and sets of them.

A `PortSet` is what a rule target allows: None for every protocol and port, otherwise a
normalised tuple of `PortRange` (empty: nothing at all). TCP and UDP ranges are port intervals;
ICMP (v4 and v6) carries no port, so its range is always the full 0-65535.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "ICMP",
    "ICMPV6",
    "PROTOCOLS",
    "TCP",
    "UDP",
    "PortRange",
    "PortSet",
    "PortSpec",
    "allows",
    "covers",
    "describe",
    "intersect",
    "port_set",
]

ICMP: Final = 1
TCP: Final = 6
UDP: Final = 17
ICMPV6: Final = 58
#: Protocols whose flows have a destination port.
PORTED: Final = frozenset({TCP, UDP})
PROTOCOLS: Final = {"tcp": (TCP,), "udp": (UDP,), "icmp": (ICMP, ICMPV6)}
_NAMES: Final = {TCP: "tcp", UDP: "udp", ICMP: "icmp", ICMPV6: "icmpv6"}
_ALL_PORTS: Final = (0, 65535)

ProtoName = Literal["tcp", "udp", "icmp", "any"]


@dataclass(frozen=True, slots=True, order=True)
class PortRange:
    """Protocol number `proto`, destination ports `low`..`high` inclusive."""

    proto: int
    low: int = 0
    high: int = 65535

    def __str__(self) -> str:
        name = _NAMES.get(self.proto, str(self.proto))
        if (self.low, self.high) == _ALL_PORTS:
            return name
        return f"{name}/{self.low}" if self.low == self.high else f"{name}/{self.low}-{self.high}"


#: None = every protocol and port; () = nothing.
PortSet = tuple[PortRange, ...] | None


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One protocol/port spec as an operator writes it."""

    proto: ProtoName
    low: int = 0
    high: int = 65535

    @classmethod
    def parse(cls, value: object) -> PortSpec:
        """Parse ``tcp/443``, ``udp/5000-5100``, ``tcp``, ``icmp`` or ``any``; ValueError if bad."""
        if isinstance(value, PortSpec):
            return value
        if not isinstance(value, str):
            raise ValueError(f"expected a port spec like tcp/443, got {value!r}")
        text = value.strip().lower()
        name, slash, ports = text.partition("/")
        if name == "any" and not slash:
            return cls("any")
        if name == "icmp":
            if slash:
                raise ValueError(f"{value!r}: icmp has no ports")
            return cls("icmp")
        proto: ProtoName
        if name == "tcp":
            proto = "tcp"
        elif name == "udp":
            proto = "udp"
        else:
            raise ValueError(f"{value!r}: expected tcp/PORT[-PORT], udp/PORT[-PORT], icmp or any")
        if not slash:
            return cls(proto)
        low_text, dash, high_text = ports.partition("-")
        low, high = _port(value, low_text), _port(value, high_text if dash else low_text)
        if low > high:
            raise ValueError(f"{value!r}: the range is empty ({low} > {high})")
        return cls(proto, low, high)

    def __str__(self) -> str:
        if self.proto in ("any", "icmp") or (self.low, self.high) == _ALL_PORTS:
            return self.proto
        if self.low == self.high:
            return f"{self.proto}/{self.low}"
        return f"{self.proto}/{self.low}-{self.high}"

    def ranges(self) -> PortSet:
        """The PortSet this spec alone allows."""
        if self.proto == "any":
            return None
        return tuple(PortRange(p, self.low, self.high) for p in PROTOCOLS[self.proto])


def _port(spec: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{spec!r}: ports are numbers from 1 to 65535")
    return int(text)


def _normalise(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    """Sort, and merge overlapping or adjacent ranges of one protocol."""
    merged: list[PortRange] = []
    for r in sorted(ranges):
        last = merged[-1] if merged else None
        if last is not None and last.proto == r.proto and r.low <= last.high + 1:
            merged[-1] = PortRange(r.proto, last.low, max(last.high, r.high))
        else:
            merged.append(r)
    return tuple(merged)


def port_set(specs: Iterable[PortSpec] | None) -> PortSet:
    """The union of `specs` (None or an ``any`` among them: everything)."""
    if specs is None:
        return None
    ranges: list[PortRange] = []
    for spec in specs:
        allowed = spec.ranges()
        if allowed is None:
            return None
        ranges.extend(allowed)
    return _normalise(ranges)


def intersect(a: PortSet, b: PortSet) -> PortSet:
    """What both `a` and `b` allow."""
    if a is None:
        return b
    if b is None:
        return a
    out = [
        PortRange(x.proto, max(x.low, y.low), min(x.high, y.high))
        for x in a
        for y in b
        if x.proto == y.proto and max(x.low, y.low) <= min(x.high, y.high)
    ]
    return _normalise(out)


def allows(ports: PortSet, proto: int, dport: int | None) -> bool:
    """Whether a flow of `proto` to `dport` is within `ports`.

    A TCP/UDP flow without a port (None) only matches ranges covering every port.
    """
    if ports is None:
        return True
    port = (dport or 0) if proto in PORTED else 0
    return any(r.proto == proto and r.low <= port <= r.high for r in ports)


def covers(a: PortSet, b: PortSet) -> bool:
    """Whether everything `b` allows, `a` allows too."""
    if a is None:
        return True
    if b is None:
        return False
    # `a` is normalised, so a range of `b` is covered only if one merged range of `a` holds it.
    return all(
        any(x.proto == y.proto and x.low <= y.low and y.high <= x.high for x in a) for y in b
    )


def describe(ports: PortSet) -> str:
    """``tcp/443, udp/53``, ``any`` or ``nothing``."""
    if ports is None:
        return "any"
    if not ports:
        return "nothing"
    names = [str(r) for r in ports]
    if "icmp" in names and "icmpv6" in names:
        names.remove("icmpv6")  # an operator wrote "icmp" for both
    return ", ".join(names)

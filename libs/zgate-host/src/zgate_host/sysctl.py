"""IP forwarding switches, turned on for the relay's lifetime and restored on exit."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from zgate_host.errors import HostError, PermissionRequired
from zgate_host.netns import run_in_netns

__all__ = [
    "IPV4_FORWARDING",
    "IPV6_FORWARDING",
    "ForwardingState",
    "enable_forwarding",
    "read_sysctl",
    "write_sysctl",
]

IPV4_FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")
IPV6_FORWARDING = Path("/proc/sys/net/ipv6/conf/all/forwarding")

T = TypeVar("T")

_log = logging.getLogger(__name__)


def read_sysctl(path: Path, *, netns: str | None = None) -> str:
    """Return the value of one /proc/sys file, stripped (read inside `netns` when given)."""
    return _run(netns, f"reading {path}", lambda: path.read_text(encoding="ascii").strip())


def write_sysctl(path: Path, value: str, *, netns: str | None = None) -> None:
    """Write `value` to one /proc/sys file (inside `netns` when given)."""

    def write() -> None:
        path.write_text(value + "\n", encoding="ascii")

    _run(netns, f"writing {path}", write)


@dataclass(slots=True)
class ForwardingState:
    """The forwarding switches enable_forwarding() flipped, with their earlier values."""

    previous: dict[Path, str] = field(default_factory=dict)
    """Only the switches that were changed, mapped to the value to put back."""
    netns: str | None = None

    def restore(self) -> None:
        """Put back the earlier values; idempotent. Switches that were already on stay on."""
        while self.previous:
            path, value = self.previous.popitem()
            write_sysctl(path, value, netns=self.netns)


def enable_forwarding(
    ipv4: bool = True, ipv6: bool = True, *, netns: str | None = None
) -> ForwardingState:
    """Turn on IPv4 and/or IPv6 forwarding and remember what to restore.

    Where the kernel has no IPv6 (no sysctl file), IPv6 is skipped with a warning. Note that
    IPv6 forwarding makes the host a router: it then ignores router advertisements on
    interfaces whose accept_ra is 1.
    """
    state = ForwardingState(netns=netns)
    wanted = [p for p, on in ((IPV4_FORWARDING, ipv4), (IPV6_FORWARDING, ipv6)) if on]
    try:
        for path in wanted:
            try:
                before = read_sysctl(path, netns=netns)
            except HostError as exc:
                if path == IPV6_FORWARDING and isinstance(exc.__cause__, FileNotFoundError):
                    _log.warning("IPv6 forwarding not available: %s is missing", path)
                    continue
                raise
            if before != "1":
                write_sysctl(path, "1", netns=netns)
                state.previous[path] = before
    except BaseException:
        state.restore()
        raise
    return state


def _run(netns: str | None, what: str, fn: Callable[[], T]) -> T:
    def call() -> T:
        try:
            return fn()
        except PermissionError as exc:
            raise PermissionRequired(f"{what} needs root or CAP_NET_ADMIN") from exc
        except OSError as exc:
            raise HostError(f"{what}: {exc.strerror}", code=exc.errno) from exc

    # /proc/sys/net shows the namespace of the thread that opens it.
    if netns is None:
        return call()
    return run_in_netns(netns, call)

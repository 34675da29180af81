"""IP forwarding switches, turned on for the relay's lifetime and restored on exit."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from zgate_host.errors import (
    NET_ADMIN_FIX,
    HostError,
    PermissionRequired,
    SysctlNotWritable,
    describe_errno,
)
from zgate_host.netns import run_in_netns

__all__ = [
    "IPV4_FORWARDING",
    "IPV6_FORWARDING",
    "ForwardingState",
    "enable_forwarding",
    "read_sysctl",
    "sysctl_name",
    "write_sysctl",
]

IPV4_FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")
IPV6_FORWARDING = Path("/proc/sys/net/ipv6/conf/all/forwarding")
_PROC_SYS = Path("/proc/sys")
# Errors of a write that no privilege here can fix: /proc/sys is mounted read-only (every
# container runtime does that) or the kernel refuses the write in this namespace.
_READ_ONLY = (errno.EROFS,)

T = TypeVar("T")

_log = logging.getLogger(__name__)


def read_sysctl(path: Path, *, netns: str | None = None) -> str:
    """Return the value of one /proc/sys file, stripped (read inside `netns` when given)."""
    return _run(netns, f"reading {path}", lambda: path.read_text(encoding="ascii").strip())


def sysctl_name(path: Path) -> str:
    """The sysctl(8) name of a /proc/sys file: net.ipv4.ip_forward."""
    try:
        return ".".join(path.relative_to(_PROC_SYS).parts)
    except ValueError:
        return str(path)


def write_sysctl(path: Path, value: str, *, netns: str | None = None) -> None:
    """Write `value` to one /proc/sys file (inside `netns` when given).

    A read-only /proc/sys (a container) raises SysctlNotWritable naming the compose and
    Kubernetes settings that set the value instead.
    """

    def write() -> None:
        path.write_text(value + "\n", encoding="ascii")

    try:
        _run(netns, f"writing {sysctl_name(path)}", write)
    except HostError as exc:
        if exc.code not in _READ_ONLY:
            raise
        try:
            current = read_sysctl(path, netns=netns)
        except HostError:
            current = "unreadable"
        raise _not_writable({path: current}, value) from exc


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
    # Switches that are off and cannot be turned on here: reported together, in one error.
    stuck: dict[Path, str] = {}
    try:
        for path in wanted:
            try:
                before = read_sysctl(path, netns=netns)
            except HostError as exc:
                if path == IPV6_FORWARDING and isinstance(exc.__cause__, FileNotFoundError):
                    _log.warning("IPv6 forwarding not available: %s is missing", path)
                    continue
                raise
            if before == "1":
                _log.debug("%s is already 1", sysctl_name(path))
                continue
            try:
                write_sysctl(path, "1", netns=netns)
            except SysctlNotWritable:
                stuck[path] = before
                continue
            state.previous[path] = before
        if stuck:
            raise _not_writable(stuck, "1")
    except BaseException:
        state.restore()
        raise
    return state


def _not_writable(current: dict[Path, str], wanted: str) -> SysctlNotWritable:
    names = [sysctl_name(path) for path in current]
    values = " and ".join(f"{sysctl_name(path)} is {value}" for path, value in current.items())
    settings = ", ".join(f'{name}: "{wanted}"' for name in names)
    flags = " ".join(f"--sysctl {name}={wanted}" for name in names)
    them = "them" if len(names) > 1 else "it"
    return SysctlNotWritable(
        f"{values} and /proc/sys is read-only (a container?): set {them} in compose "
        f"(sysctls: {settings}), with docker run {flags}, or in the pod's "
        "securityContext.sysctls",
        code=errno.EROFS,
    )


def _run(netns: str | None, what: str, fn: Callable[[], T]) -> T:
    def call() -> T:
        try:
            return fn()
        except PermissionError as exc:
            raise PermissionRequired(
                f"{what}: {describe_errno(exc.errno, exc.strerror)}: {NET_ADMIN_FIX}",
                code=exc.errno,
            ) from exc
        except OSError as exc:
            raise HostError(
                f"{what}: {describe_errno(exc.errno, exc.strerror)}", code=exc.errno
            ) from exc

    # /proc/sys/net shows the namespace of the thread that opens it.
    if netns is None:
        return call()
    return run_in_netns(netns, call)

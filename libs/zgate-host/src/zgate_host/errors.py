"""The exceptions of zgate_host: one base, a few precise subclasses."""

from __future__ import annotations

import errno as _errno
import os as _os

__all__ = [
    "CommandFailed",
    "HostError",
    "IPv6Disabled",
    "InvalidArgument",
    "LinkNotFound",
    "PermissionRequired",
    "SysctlNotWritable",
    "ToolMissing",
    "TunUnavailable",
    "describe_errno",
]

#: How an operator grants the capability, for messages that need it.
NET_ADMIN_FIX = (
    "run as root or grant CAP_NET_ADMIN (compose: `cap_add: [NET_ADMIN]`, "
    "docker run --cap-add NET_ADMIN, systemd AmbientCapabilities=CAP_NET_ADMIN)"
)


def describe_errno(code: int | None, strerror: str | None = None) -> str:
    """'Permission denied (EACCES)': the text and the symbolic name of an errno."""
    if code is None:
        return strerror or "unknown error"
    name = _errno.errorcode.get(code, f"errno {code}")
    return f"{strerror or _os.strerror(code)} ({name})"


class HostError(Exception):
    """Base of every error zgate_host raises; `code` is the errno when the kernel gave one."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class PermissionRequired(HostError):
    """The operation needs privileges the process lacks; the message says which."""


class InvalidArgument(HostError, ValueError):
    """An argument the kernel or nft would refuse (a bad interface name, an MTU out of range)."""


class LinkNotFound(HostError):
    """A network interface named by the caller does not exist."""


class CommandFailed(HostError):
    """An external command (nft) failed; carries its exit status and stderr."""

    def __init__(self, message: str, *, returncode: int, stderr: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class TunUnavailable(HostError):
    """/dev/net/tun is missing (no tun module, or a container without the device)."""


class ToolMissing(HostError):
    """An external program zgate_host drives (nft) is not installed."""


class SysctlNotWritable(HostError):
    """A /proc/sys switch has the wrong value and cannot be changed from here (a read-only
    /proc/sys in a container); the message names the setting that fixes it."""


class IPv6Disabled(HostError):
    """IPv6 is disabled on an interface (net.ipv6.conf.*.disable_ipv6=1, Docker's default in a
    container) and cannot be enabled from here, so an IPv6 address cannot be added."""

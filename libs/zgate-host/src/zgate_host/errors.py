"""The exceptions of zgate_host: one base, a few precise subclasses."""

from __future__ import annotations

__all__ = [
    "CommandFailed",
    "HostError",
    "InvalidArgument",
    "LinkNotFound",
    "PermissionRequired",
]


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

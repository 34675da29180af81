"""Run a piece of host work inside a named network namespace (or just off the event loop).

setns(2) on a network namespace moves only the calling thread, so the work runs in a fresh
thread that enters the namespace, does its job (sockets it opens and processes it starts
belong to that namespace) and ends; the caller's thread never changes namespace.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from zgate_host.errors import HostError, InvalidArgument, PermissionRequired

__all__ = ["NETNS_DIR", "netns_path", "run_in_netns"]

T = TypeVar("T")

NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000


def netns_path(name: str) -> Path:
    """Return the bind-mount path `ip netns add NAME` creates for a namespace."""
    if not name or "/" in name or name in (".", ".."):
        raise InvalidArgument(f"bad network namespace name {name!r}")
    return NETNS_DIR / name


def _enter(name: str) -> None:
    path = netns_path(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise HostError(f"network namespace {name!r} does not exist ({path})") from None
    except PermissionError:
        raise PermissionRequired(f"opening network namespace {name!r} needs root") from None
    try:
        # Python 3.11 has no os.setns; libc's is a thin syscall wrapper.
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            if code == errno.EPERM:
                raise PermissionRequired(
                    f"entering network namespace {name!r} needs root or CAP_SYS_ADMIN"
                )
            raise HostError(
                f"cannot enter network namespace {name!r}: {os.strerror(code)}", code=code
            )
    finally:
        os.close(fd)


def run_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Run `fn` in a short-lived thread, inside namespace `netns` when given; return its result.

    Exceptions raised by `fn` propagate to the caller. Also useful with `netns=None`: the
    thread has no running asyncio loop, which pyroute2's synchronous API requires.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            if netns is not None:
                _enter(netns)
            result.append(fn())
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=body, name=f"zgate-host-{netns or 'worker'}", daemon=True)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return result[0]

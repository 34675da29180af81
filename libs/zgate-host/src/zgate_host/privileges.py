"""Does this process hold CAP_NET_ADMIN, and a clear error when it does not."""

from __future__ import annotations

import os
from pathlib import Path

from zgate_host.errors import PermissionRequired

__all__ = [
    "CAP_NET_ADMIN",
    "effective_capabilities",
    "has_net_admin",
    "parse_cap_eff",
    "require_net_admin",
]

CAP_NET_ADMIN = 12
_STATUS = Path("/proc/self/status")


def parse_cap_eff(status: str) -> int | None:
    """Return the CapEff bit mask from the text of /proc/<pid>/status, or None if absent."""
    for line in status.splitlines():
        key, sep, value = line.partition(":")
        if sep and key == "CapEff":
            try:
                return int(value.strip(), 16)
            except ValueError:
                return None
    return None


def effective_capabilities(status_path: Path = _STATUS) -> int | None:
    """Return this process's effective capability mask, or None when /proc cannot tell."""
    try:
        text = status_path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return parse_cap_eff(text)


def has_net_admin(status_path: Path = _STATUS) -> bool:
    """True if the process may configure the network (CAP_NET_ADMIN in its effective set).

    The capability set is the truth: root in a container without NET_ADMIN cannot open a TUN
    device. Only when /proc gives no answer does an effective uid of 0 count as enough.
    """
    caps = effective_capabilities(status_path)
    if caps is None:
        return os.geteuid() == 0
    return bool(caps >> CAP_NET_ADMIN & 1)


def require_net_admin(what: str) -> None:
    """Raise PermissionRequired, naming `what` and the fix, unless has_net_admin()."""
    if has_net_admin():
        return
    raise PermissionRequired(
        f"{what} needs root or CAP_NET_ADMIN (run as root, grant the capability with "
        "`setcap cap_net_admin+ep` or systemd AmbientCapabilities=CAP_NET_ADMIN, or give the "
        "container `--cap-add NET_ADMIN --device /dev/net/tun`)"
    )

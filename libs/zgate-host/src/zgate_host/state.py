"""Where a service keeps its state (audit log, cached snapshots, a development PKI).

One directory per service, never the working directory: a service started by systemd (from
``/``), in its image or from any shell finds the same files. Root (a system install, an
image) uses ``/var/lib/zgate/<service>``, which the systemd units declare with
``StateDirectory=`` and the images as a volume; anyone else gets
``$XDG_STATE_HOME/zgate/<service>`` (``~/.local/state/zgate/<service>``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from zgate_host.errors import HostError

__all__ = ["SYSTEM_STATE_ROOT", "StateDirError", "default_state_dir", "ensure_state_dir"]

#: Parent of every service's state directory on a system install.
SYSTEM_STATE_ROOT = Path("/var/lib/zgate")


class StateDirError(HostError):
    """The state directory cannot be created or written; the message names it and the fix."""


def default_state_dir(
    service: str, *, euid: int | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """The state directory ``service`` uses when none is configured."""
    euid = os.geteuid() if euid is None else euid
    env = os.environ if environ is None else environ
    if euid == 0:
        return SYSTEM_STATE_ROOT / service
    base = env.get("XDG_STATE_HOME") or str(
        Path(env.get("HOME") or "~").expanduser() / ".local" / "state"
    )
    return Path(base) / "zgate" / service


def ensure_state_dir(path: Path, flag: str = "--state-dir") -> Path:
    """Create ``path`` (mode 0700, parents too) if missing and check that it is a writable
    directory; returns it absolute. Modes of an existing directory are left alone."""
    path = path.expanduser().absolute()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise StateDirError(
            f"state directory {path} exists and is not a directory ({flag})"
        ) from None
    except OSError as exc:
        raise StateDirError(
            f"cannot create the state directory {path}: {exc.strerror or exc}; "
            f"create it, make it writable for this user, or choose another with {flag}"
        ) from None
    if not path.is_dir():
        raise StateDirError(f"state directory {path} is not a directory ({flag})")
    if not os.access(path, os.W_OK | os.X_OK):
        raise StateDirError(
            f"the state directory {path} is not writable by this user; "
            f"fix its owner or mode, or choose another with {flag}"
        )
    return path

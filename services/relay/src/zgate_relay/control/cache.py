"""The last good control-plane state on disk (<state_dir>/control-snapshot.json): written
after every successful apply, read at start so the relay enforces it before it serves,
even while the control plane is unreachable.

Written atomically (a temporary file, fsync, rename, fsync of the folder) with mode 0600:
a crash leaves the old file or the new one, never half of one. A file that cannot be read
back is renamed aside (``.corrupt``) and the relay starts as if there were none.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from zgate_relay.control.state import ControlState, StateFormatError

__all__ = ["CACHE_NAME", "CachedState", "load_cache", "save_cache", "write_atomically"]

log = logging.getLogger("zgate.relay.control")

#: The cache's file name in the relay's state directory.
CACHE_NAME = "control-snapshot.json"
#: Bumped when the layout changes incompatibly (an older relay then ignores the file).
FORMAT = 1


@dataclass(frozen=True, slots=True)
class CachedState:
    """A state read from the cache, and when it was saved."""

    state: ControlState
    saved_at: datetime


def save_cache(path: Path, state: ControlState, now: datetime) -> None:
    """Write ``state`` as the cache (atomically, mode 0600); raises OSError."""
    document = {"format": FORMAT, **state.as_dict(), "saved_at": now.isoformat()}
    write_atomically(path, json.dumps(document, indent=1).encode() + b"\n")


def load_cache(path: Path) -> CachedState | None:
    """The cached state; None when there is none, or when it is unreadable (then it is
    renamed to ``<name>.corrupt`` and an error is logged)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.error(
            "cannot read the cached control-plane snapshot; starting without it",
            extra={"path": str(path), "error": exc.strerror or str(exc)},
        )
        return None
    try:
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise StateFormatError(f"not a format-{FORMAT} snapshot")
        saved_at = datetime.fromisoformat(str(document["saved_at"]))
        return CachedState(ControlState.from_dict(document), saved_at)
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError and StateFormatError too
        aside = path.with_name(path.name + ".corrupt")
        with contextlib.suppress(OSError):
            path.replace(aside)
        log.error(
            "the cached control-plane snapshot is corrupt: moved aside, starting without it",
            extra={"path": str(path), "moved_to": str(aside), "error": str(exc)},
        )
        return None


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` by ``data`` in one step (tmp + fsync + rename); raises OSError."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # an old temporary file keeps its mode through O_CREAT
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    # The rename itself is durable only once the folder is synced.
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)

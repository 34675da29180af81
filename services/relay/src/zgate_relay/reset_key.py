"""The relay's stateless reset key: a file of random bytes kept across restarts.

Stateless reset tokens (RFC 9000 §10.3) are derived from it (:func:`zgate_relay.door.reset_token`),
so a relay that restarted can still prove to an agent that it forgot the agent's connection,
and the agent reconnects at once instead of waiting for its idle timeout. Whoever reads the
key can reset the relay's connections: the file is created 0600, and one readable by others
is refused.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from zgate_relay.startup import StartupError

__all__ = ["RESET_KEY_SIZE", "load_reset_key"]

#: Bytes of key material in the file.
RESET_KEY_SIZE: Final = 32


def load_reset_key(path: Path, flag: str = "--reset-key") -> bytes:
    """The key in ``path``, created (0600, random) when the file does not exist yet.

    Raises StartupError naming ``flag`` for a file that cannot be read or written, is too
    short, or is readable by group or others."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StartupError(
            f"cannot create the reset key {flag} {path}: {exc.strerror or exc}"
        ) from None
    else:
        with os.fdopen(fd, "wb") as out:
            out.write(os.urandom(RESET_KEY_SIZE))
    try:
        mode = path.stat().st_mode
        key = path.read_bytes()
    except OSError as exc:
        raise StartupError(
            f"cannot read the reset key {flag} {path}: {exc.strerror or exc}"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StartupError(
            f"the reset key {flag} {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
            f"chmod 600 it"
        )
    if len(key) < RESET_KEY_SIZE:
        raise StartupError(
            f"the reset key {flag} {path} holds {len(key)} bytes, fewer than {RESET_KEY_SIZE}; "
            f"delete it to have a new one made (agents' connections then cannot be reset once)"
        )
    return key

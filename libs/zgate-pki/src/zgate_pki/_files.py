"""File primitives for the PKI directory: atomic writes, 0600 keys, one writer at a time."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from ._errors import PkiError

__all__ = ["ensure_private_dir", "pki_lock", "read_file", "write_private", "write_public"]

_LOCK_NAME = ".lock"


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    # The temporary file is created with its final mode (no chmod window in which a key is
    # world-readable) and renamed over the target, so readers never see a half-written file.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, mode)
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)
    except OSError as exc:
        raise PkiError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_private(path: Path, data: bytes) -> None:
    """Atomically write a secret (a private key) readable by its owner only (0600)."""
    _write_atomic(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    """Atomically write a public file (certificate, CRL, index) with mode 0644."""
    _write_atomic(path, data, 0o644)


def read_file(path: Path, what: str) -> bytes:
    """Read a whole file, turning OS errors into a PkiError that names `what` and `path`."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise PkiError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) with mode 0700 if missing; existing modes are left alone."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise PkiError(f"cannot create directory {path}: {exc.strerror or exc}") from exc
    if not path.is_dir():
        raise PkiError(f"not a directory: {path}")


@contextlib.contextmanager
def pki_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on an existing PKI directory (`zgate pki` runs never interleave)."""
    if not directory.is_dir():
        raise PkiError(
            f"no PKI in {directory} (create one with `zgate pki init --dir {directory}`, "
            f"or give the right --dir)"
        )
    try:
        fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise PkiError(f"cannot lock {directory}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock

"""Writing certificate bundles the control plane issued: checked before the request (the key
is in that one answer only), written without overwriting anything, private keys 0600.

``ca.pem`` is shared by every bundle written into one directory (several clients' files side by
side): an existing one is kept when it is the same CA, so a second ``client add --out DIR``
works, and is never replaced when it differs (the new CA goes beside it, and the command says
so after the bundle is safely written)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import CtlError, UsageError

__all__ = ["SHARED", "BundleFile", "check_writable", "write_bundle"]

#: Files every bundle of one control plane has in common.
SHARED = frozenset({"ca.pem"})


@dataclass(frozen=True, slots=True)
class BundleFile:
    """One file of a bundle: its name in the directory, its text and whether it is secret."""

    name: str
    text: str
    private: bool = False


def check_writable(directory: Path, names: Sequence[str]) -> None:
    """Refuse (UsageError) before anything is issued: `directory` is not a directory, or one
    of `names` already exists in it."""
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--out {directory} is not a directory")
    existing = [name for name in names if name not in SHARED and (directory / name).exists()]
    if existing:
        raise UsageError(
            f"refusing to overwrite {', '.join(str(directory / n) for n in existing)}:"
            " move them away or choose another --out"
        )


def write_bundle(directory: Path, files: Sequence[BundleFile]) -> list[Path]:
    """Write `files` into `directory` (created 0700 when missing); each must not exist yet.
    Private files are created 0600 from the start, the rest 0644. Returns the paths."""
    written: list[Path] = []
    differing: list[tuple[Path, Path]] = []
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for file in files:
            path = directory / file.name
            if file.name in SHARED and path.exists():
                if path.read_text(encoding="utf-8") == file.text:
                    written.append(path)
                    continue
                beside = path.with_name(path.name + ".new")
                differing.append((path, beside))
                path = beside
            mode = 0o600 if file.private else 0o644
            # O_EXCL: a file that appeared since check_writable is never overwritten.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(file.text)
            written.append(path)
    except OSError as exc:
        done = f" (wrote {', '.join(map(str, written))})" if written else ""
        raise CtlError(f"cannot write the bundle into {directory}: {exc}{done}") from None
    if differing:
        kept, beside = differing[0]
        raise CtlError(
            f"the bundle is written, but {kept} holds another CA than the control plane's: it "
            f"was kept, and the control plane's CA is in {beside}; check which one is right"
        )
    return written

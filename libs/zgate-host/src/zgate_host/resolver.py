"""Name resolution through a tunnel: point the host's resolver at the relay while the
tunnel is up, and put the host's own configuration back afterwards, also after a crash.

Two methods:

- **systemd-resolved**, where it runs and the host resolves through its stub: per-link DNS
  on the tunnel device (``resolvectl dns|domain|default-route``; ``resolvectl revert`` on
  exit, and the link's settings vanish with the device anyway).
- **a managed /etc/resolv.conf** otherwise: the original (a file, a symbolic link, or
  nothing) is saved in the state directory first, then a file marked as zgate's is
  written (atomically: a temporary file renamed over it; in place where that file is a
  bind mount, as in containers and ``ip netns exec``). On exit the original comes back;
  after a crash the next start puts it back, unless someone changed the file since.

The decisions are pure functions of what was observed (:func:`choose_method`,
:func:`render_resolv_conf`, :func:`recovery_for`, ...); :class:`HostResolver` is the thin
layer that observes, writes and runs ``resolvectl``.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "BACKUP_NAME",
    "MANAGED_MARKER",
    "RESOLVED_STUBS",
    "Backup",
    "FileState",
    "HostResolver",
    "Method",
    "Recovery",
    "choose_method",
    "is_managed",
    "nameservers",
    "recovery_for",
    "relay_dns_servers",
    "render_resolv_conf",
    "resolved_commands",
]

log = logging.getLogger("zgate.dns")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_DIR = Path("/run/systemd/resolve")
BACKUP_NAME = "resolv.conf.backup.json"
"""The backup's file name inside the state directory."""
MANAGED_MARKER = "# Managed by zgate"
"""The first line of every resolv.conf zgate writes."""
RESOLVED_STUBS = frozenset({"127.0.0.53", "127.0.0.54"})
"""systemd-resolved's local stub listeners."""
DEFAULT_POOLS: tuple[Network, ...] = (
    ipaddress.IPv4Network("10.100.0.0/16"),
    ipaddress.IPv6Network("fd7a:7a67::/64"),
)
"""The relay's default tunnel pools; its DNS service listens on the first host address."""


class Method(enum.Enum):
    """How the host's resolver is pointed at the relay."""

    RESOLVED = "systemd-resolved"
    RESOLV_CONF = "resolv.conf"


# --------------------------------------------------------------------------- sans-IO


def relay_dns_servers(
    addresses: Iterable[Network], configured: Sequence[Address] = ()
) -> list[Address]:
    """The relay's DNS addresses, for a tunnel that was assigned ``addresses``.

    ``configured`` wins when given. Otherwise the relay's convention: its DNS service
    listens on the first host address of each pool (``network + 1``). An assigned prefix
    shorter than a host route says the pool; a host address (what the relay assigns) is
    matched against the relay's default pools (10.100.0.0/16, fd7a:7a67::/64). An address
    outside them gives no server: the relay's pool is not known, ``--dns-server`` says it.
    """
    if configured:
        return list(dict.fromkeys(configured))
    servers: list[Address] = []
    for net in addresses:
        if net.prefixlen < net.max_prefixlen - 1:
            servers.append(net.network_address + 1)
            continue
        for pool in DEFAULT_POOLS:
            if pool.version == net.version and net.network_address in pool:
                servers.append(pool.network_address + 1)
    v4 = [s for s in servers if s.version == 4]
    v6 = [s for s in servers if s.version == 6]
    return list(dict.fromkeys([*v4, *v6]))


@dataclass(frozen=True)
class FileState:
    """What a path is: a regular file (its text), a symbolic link (its target as stored,
    and the text behind it), or nothing."""

    kind: Literal["file", "link", "missing"]
    content: str | None = None
    target: str | None = None
    mode: int | None = None
    target_is_mount: bool = False
    """A link whose target is a mount point (``ip netns exec`` mounts a namespace's own
    resolv.conf over the link's target): written through, never replaced."""

    @property
    def digest(self) -> str | None:
        """SHA-256 of a regular file's text (None for a link or nothing)."""
        return _digest(self.content) if self.kind == "file" and self.content is not None else None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def nameservers(text: str | None) -> list[str]:
    """The ``nameserver`` addresses of resolv.conf text, in order."""
    found = []
    for line in (text or "").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            found.append(words[1])
    return found


def is_managed(text: str | None) -> bool:
    """Whether resolv.conf text was written by zgate (its first line is the marker)."""
    return bool(text) and str(text).startswith(MANAGED_MARKER)


def choose_method(
    *, resolved_running: bool, resolvectl: str | None, resolv_conf: FileState
) -> Method:
    """systemd-resolved when it runs, ``resolvectl`` is there and the host resolves
    through resolved's stub (else per-link DNS would change nothing for most programs);
    a managed resolv.conf otherwise."""
    uses_stub = any(ns in RESOLVED_STUBS for ns in nameservers(resolv_conf.content))
    if resolved_running and resolvectl is not None and uses_stub:
        return Method.RESOLVED
    return Method.RESOLV_CONF


def render_resolv_conf(
    servers: Sequence[Address],
    original: str | None,
    *,
    device: str,
    fallback: bool = False,
) -> str:
    """The resolv.conf zgate writes: its marker, the relay's servers, and the original's
    ``search``/``domain``/``options`` lines (so short names keep working).

    ``fallback`` keeps the original's own servers after the relay's (split tunnel with
    resolv.conf, which cannot route names by domain: the relay is asked first, the host's
    servers only when it does not answer), at most three in all as the C library reads.
    """
    lines = [
        f"{MANAGED_MARKER} (zgate-agent, tunnel device {device}): names resolve through the",
        "# tunnel while the agent runs; the original comes back when it stops. Do not edit.",
    ]
    ours = [str(s) for s in servers]
    theirs = [
        ns
        for ns in nameservers(original)
        if fallback and ns not in ours and ns not in RESOLVED_STUBS
    ]
    lines += [f"nameserver {ns}" for ns in [*ours, *theirs][: max(3, len(ours))]]
    for line in (original or "").splitlines():
        words = line.split()
        if words and words[0] in ("search", "domain", "options"):
            lines.append(line.strip())
    return "\n".join(lines) + "\n"


def resolved_commands(
    resolvectl: str, device: str, servers: Sequence[Address], domains: Sequence[str]
) -> list[list[str]]:
    """The ``resolvectl`` calls giving ``device`` the relay's servers: every name (``~.``,
    default route) without ``domains``, only names under them with."""
    routing = [f"~{d.strip('.')}" for d in domains] if domains else ["~."]
    return [
        [resolvectl, "dns", device, *[str(s) for s in servers]],
        [resolvectl, "domain", device, *routing],
        [resolvectl, "default-route", device, "false" if domains else "true"],
    ]


@dataclass(frozen=True)
class Backup:
    """What the state directory remembers of a managed resolv.conf: the original at
    ``path`` and the digest of the text zgate wrote there."""

    path: str
    original: FileState
    written: str

    def to_json(self) -> str:
        o = self.original
        data = {
            "version": 1,
            "path": self.path,
            "kind": o.kind,
            "content": o.content,
            "target": o.target,
            "mode": o.mode,
            "written": self.written,
        }
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Backup:
        """Parse a backup; ValueError when it is not one."""
        try:
            data = json.loads(text)
            kind = data["kind"]
            if kind not in ("file", "link", "missing") or not isinstance(data["written"], str):
                raise ValueError(f"unknown kind {kind!r}")
            if kind == "link" and not isinstance(data["target"], str):
                raise ValueError("a link without a target")
            if kind == "file" and not isinstance(data["content"], str):
                raise ValueError("a file without its text")
            original = FileState(
                kind=kind, content=data["content"], target=data["target"], mode=data["mode"]
            )
            return cls(path=str(data["path"]), original=original, written=data["written"])
        except (KeyError, TypeError, json.JSONDecodeError, RecursionError) as exc:
            # RecursionError: json.loads of a deeply nested document (a corrupt state file).
            raise ValueError(f"not a zgate resolv.conf backup: {exc}") from exc


class Recovery(enum.Enum):
    """What to do with a backup found against the file as it is now."""

    NOTHING = "nothing"
    """No backup."""
    RESTORE = "restore"
    """The file is still what zgate wrote: put the original back."""
    ALREADY_ORIGINAL = "already-original"
    """The file is the original already (zgate stopped before writing): drop the backup."""
    FOREIGN = "foreign"
    """Someone changed the file since zgate wrote it: leave it, drop the backup."""


def recovery_for(backup: Backup | None, current: FileState) -> Recovery:
    """Decide what a backup means for the file as it is now."""
    if backup is None:
        return Recovery.NOTHING
    if current.digest is not None and current.digest == backup.written:
        return Recovery.RESTORE
    o = backup.original
    same_link = o.kind == current.kind == "link" and o.target == current.target
    same_file = o.kind == current.kind == "file" and o.content == current.content
    if same_link or same_file or o.kind == current.kind == "missing":
        return Recovery.ALREADY_ORIGINAL
    return Recovery.FOREIGN


# ------------------------------------------------------------------------------- I/O


class ResolverError(Exception):
    """The resolver could not be configured or restored; the message names the file."""


def observe(path: Path, *, mountinfo: Path = Path("/proc/self/mountinfo")) -> FileState:
    """What ``path`` is now."""
    try:
        if path.is_symlink():
            target = os.readlink(path)
            content: str | None = None
            with contextlib.suppress(OSError):
                content = path.read_text()
            behind = str(path.resolve())
            return FileState(
                "link", content, target, None, _is_mount_point(behind, mountinfo=mountinfo)
            )
        if not path.exists():
            return FileState("missing")
        return FileState("file", path.read_text(), None, path.stat().st_mode & 0o7777)
    except UnicodeDecodeError as exc:
        raise OSError(errno.EINVAL, f"not text: {exc}") from exc


def _is_mount_point(path: str, *, mountinfo: Path) -> bool:
    """Whether ``path`` is a mount point (a bind-mounted file counts; os.path.ismount
    does not see those)."""
    try:
        text = mountinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 4 and _unescape(fields[4]) == path:
            return True
    return False


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape")


Rename = Callable[[str, str], None]
Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run_command(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=10, check=False)


@dataclass
class HostResolver:
    """Points the host's resolver at given servers and puts it back (the I/O layer).

    Every path and system call that matters is a parameter, so that tests run in a
    temporary directory: ``resolv_conf``, ``state_dir`` (where the backup lives),
    ``resolved_dir`` (whose existence says systemd-resolved runs), ``which`` (finds
    ``resolvectl``), ``run`` (runs it) and ``rename`` (os.rename; a bind-mounted file
    makes it fail with EBUSY, and the file is then rewritten in place).

    Methods raise :class:`ResolverError` with one readable sentence; the caller logs it.
    """

    state_dir: Path
    resolv_conf: Path = RESOLV_CONF
    resolved_dir: Path = RESOLVED_DIR
    mountinfo: Path = Path("/proc/self/mountinfo")
    which: Callable[[str], str | None] = shutil.which
    run: Runner = _run_command
    rename: Rename = os.rename
    #: The method in use, None while nothing is configured.
    method: Method | None = None
    device: str | None = None
    servers: list[Address] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    #: How the managed file was written: "atomic" (renamed over), "in place" (bind mount).
    written_how: str | None = None
    #: The path a managed resolv.conf was written at (a link's target when written through).
    managed_path: Path | None = None

    @property
    def backup_path(self) -> Path:
        return self.state_dir / BACKUP_NAME

    # ----------------------------------------------------------------- recovery

    def recover(self) -> Recovery:
        """At start, before anything else: deal with a backup a crashed agent left."""
        settled = self._settle_backup()
        if settled is None:
            return Recovery.NOTHING
        decision, path, original = settled
        if decision is Recovery.RESTORE:
            log.info(
                "DNS: restored the resolver configuration a previous agent left (it did not "
                "stop cleanly)",
                extra={"file": str(path), "original": _describe(original)},
            )
        elif decision is Recovery.FOREIGN:
            log.info(
                "DNS: a previous agent's backup of the resolver configuration is stale: the "
                "file changed since that agent wrote it, so it is left as it is",
                extra={"file": str(path), "backup": str(self.backup_path)},
            )
        return decision

    def _settle_backup(self) -> tuple[Recovery, Path, FileState] | None:
        """Put the saved original back unless the file changed since it was managed, then
        drop the backup; what was decided, or None when there was no backup."""
        backup = self._read_backup()
        if backup is None:
            return None
        path = Path(backup.path)
        try:
            current = observe(path, mountinfo=self.mountinfo)
        except OSError as exc:
            raise ResolverError(f"cannot read {path}: {_reason(exc)}") from exc
        decision = recovery_for(backup, current)
        if decision is Recovery.RESTORE:
            self._restore_original(path, backup.original)
        self._drop_backup()
        return decision, path, backup.original

    # -------------------------------------------------------------------- apply

    def apply(
        self,
        device: str,
        servers: Sequence[Address],
        domains: Sequence[str] = (),
        *,
        fallback: bool = False,
    ) -> Method:
        """Point the resolver at ``servers`` (names under ``domains`` only, where the
        method can route by domain; ``fallback`` keeps the host's servers after them in a
        managed resolv.conf). Idempotent; called again on each reconnect."""
        if not servers:
            raise ResolverError("no DNS server to point the resolver at")
        if self.method is Method.RESOLVED or (
            self.method is None and self._choose() is Method.RESOLVED
        ):
            try:
                self._apply_resolved(device, servers, domains)
            except ResolverError as exc:
                if self.method is Method.RESOLVED:
                    raise
                log.warning(
                    "DNS: systemd-resolved refused the tunnel's DNS settings; writing %s instead",
                    self.resolv_conf,
                    extra={"error": str(exc)},
                )
            else:
                return self._applied(Method.RESOLVED, device, servers, domains)
        self._apply_resolv_conf(device, servers, fallback=fallback)
        return self._applied(Method.RESOLV_CONF, device, servers, domains)

    def _applied(
        self, method: Method, device: str, servers: Sequence[Address], domains: Sequence[str]
    ) -> Method:
        wanted = (method, list(servers), list(domains))
        changed = (self.method, self.servers, self.domains) != wanted
        self.method, self.device = method, device
        self.servers, self.domains = list(servers), list(domains)
        if changed:
            log.info(
                "DNS: names resolve through the tunnel",
                extra={
                    "method": method.value,
                    "servers": [str(s) for s in servers],
                    "domains": list(domains) or ["."],
                    "where": self.where(),
                },
            )
        return method

    def _choose(self) -> Method:
        try:
            current = observe(self.resolv_conf, mountinfo=self.mountinfo)
        except OSError:
            current = FileState("missing")
        return choose_method(
            resolved_running=self.resolved_dir.is_dir(),
            resolvectl=self.which("resolvectl"),
            resolv_conf=current,
        )

    def _apply_resolved(
        self, device: str, servers: Sequence[Address], domains: Sequence[str]
    ) -> None:
        resolvectl = self.which("resolvectl") or "resolvectl"
        for cmd in resolved_commands(resolvectl, device, servers, domains):
            try:
                done = self.run(cmd)
            except (OSError, subprocess.SubprocessError) as exc:
                raise ResolverError(f"{' '.join(cmd)}: {exc}") from exc
            # default-route is missing in old systemd versions: not worth failing for.
            if done.returncode != 0 and cmd[1] != "default-route":
                detail = (done.stderr or done.stdout).strip() or f"exit {done.returncode}"
                raise ResolverError(f"{' '.join(cmd)}: {detail}")

    def _apply_resolv_conf(
        self, device: str, servers: Sequence[Address], *, fallback: bool
    ) -> None:
        backup = self._read_backup()
        if backup is not None:
            path, original = Path(backup.path), backup.original
        else:
            try:
                original = observe(self.resolv_conf, mountinfo=self.mountinfo)
            except OSError as exc:
                raise ResolverError(f"cannot read {self.resolv_conf}: {_reason(exc)}") from exc
            path = self.resolv_conf
            if original.kind == "link" and original.target_is_mount:
                # The link's target is a bind mount (ip netns exec): write through the link
                # and leave the link, which is shared with the host, alone.
                path = self.resolv_conf.resolve()
                original = FileState("file", original.content, None, 0o644)
        text = render_resolv_conf(servers, original.content, device=device, fallback=fallback)
        try:
            if backup is not None and backup.written == _digest(text):
                return  # reconnect with the same servers: the file is as it should be
            # The backup first: a crash between the two writes leaves the original in
            # place and a backup the next start recognises as such.
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            new_backup = Backup(str(path), original, _digest(text))
            self._write_atomic(self.backup_path, new_backup.to_json(), mode=0o600)
        except OSError as exc:
            raise ResolverError(
                f"cannot save the resolver backup in {self.state_dir}: {_reason(exc)}"
            ) from exc
        try:
            self.written_how = self._write_file(path, text, mode=original.mode or 0o644)
        except OSError as exc:
            self._drop_backup()
            raise ResolverError(f"cannot write {path}: {_reason(exc)}") from exc
        self.managed_path = path

    # ------------------------------------------------------------------ restore

    def restore(self) -> None:
        """Put the host's own configuration back (idempotent; on exit)."""
        method, device = self.method, self.device
        self.method = None
        if method is Method.RESOLVED and device is not None:
            resolvectl = self.which("resolvectl") or "resolvectl"
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.run([resolvectl, "revert", device])  # the link may be gone already
            log.info("DNS: restored (per-link settings reverted)", extra={"device": device})
            return
        settled = self._settle_backup()
        self.managed_path = None
        if settled is None:
            return
        decision, path, original = settled
        if decision is Recovery.RESTORE:
            log.info(
                "DNS: restored the original resolver configuration",
                extra={"file": str(path), "original": _describe(original)},
            )
        elif decision is Recovery.FOREIGN:
            log.warning(
                "DNS: %s was changed by someone else while the agent ran; left as it is",
                path,
                extra={"file": str(path)},
            )

    def _restore_original(self, path: Path, original: FileState) -> None:
        try:
            if original.kind == "link":
                assert original.target is not None
                self._replace_with_link(path, original.target)
            elif original.kind == "missing":
                path.unlink(missing_ok=True)
            else:
                self._write_file(path, original.content or "", mode=original.mode or 0o644)
        except OSError as exc:
            raise ResolverError(
                f"cannot restore {path}: {_reason(exc)}; the original is saved in "
                f"{self.backup_path}"
            ) from exc

    # ------------------------------------------------------------------- status

    def where(self) -> str:
        """Where the configuration lives, for logs and status."""
        if self.method is Method.RESOLVED:
            return f"systemd-resolved on {self.device}"
        if self.method is Method.RESOLV_CONF:
            how = f", {self.written_how}" if self.written_how else ""
            return f"{self.managed_path or self.resolv_conf} (managed{how})"
        return "-"

    def status(self) -> dict[str, Any]:
        """For /status: method, servers, domains, where."""
        return {
            "method": self.method.value if self.method else None,
            "servers": [str(s) for s in self.servers] if self.method else [],
            "domains": list(self.domains) if self.method else [],
            "where": self.where() if self.method else None,
        }

    # -------------------------------------------------------------- file writes

    def _read_backup(self) -> Backup | None:
        try:
            text = self.backup_path.read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise ResolverError(f"cannot read {self.backup_path}: {_reason(exc)}") from exc
        try:
            return Backup.from_json(text)
        except ValueError as exc:
            log.warning(
                "DNS: ignoring an unreadable resolver backup",
                extra={"file": str(self.backup_path), "error": str(exc)},
            )
            self._drop_backup()
            return None

    def _drop_backup(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.backup_path.unlink()

    def _write_file(self, path: Path, text: str, *, mode: int) -> str:
        """Write ``path`` atomically, or in place where it is a mount point (rename fails
        with EBUSY) or no temporary file can be made next to it. Returns how."""
        try:
            self._write_atomic(path, text, mode=mode)
            return "atomic"
        except _NoAtomicWrite:
            with path.open("w") as f:  # same inode: the mount stays
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            return "in place"

    def _write_atomic(self, path: Path, text: str, *, mode: int) -> None:
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.zgate-", dir=path.parent)
        except OSError as exc:
            raise _NoAtomicWrite(exc.errno, exc.strerror) from exc
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fchmod(f.fileno(), mode)
                os.fsync(f.fileno())
            self.rename(tmp, str(path))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if exc.errno in (errno.EBUSY, errno.EXDEV):
                raise _NoAtomicWrite(exc.errno, exc.strerror) from exc
            raise

    def _replace_with_link(self, path: Path, target: str) -> None:
        tmp = path.parent / f".{path.name}.zgate-link-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(target, tmp)
        try:
            self.rename(str(tmp), str(path))
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


class _NoAtomicWrite(OSError):
    """Renaming over the file is impossible (a mount point) or no temporary file can be
    made beside it: write in place."""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _describe(state: FileState) -> str:
    if state.kind == "link":
        return f"link to {state.target}"
    return "no file" if state.kind == "missing" else "file"

"""The relay's policy: loaded at start, reloaded on SIGHUP, on file change or on request.

A new version is parsed, validated, tested and compiled off the event loop, then swapped in
at once; a version that fails any step is refused and the running one stays. Every outcome
is logged, counted and audited.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from zgate_policy import CompiledPolicy, PolicyError, load_and_compile
from zgate_policy.audit import AuditEvent, PolicyLoaded, PolicyRefused, PolicySource
from zgate_relay.metrics import RelayMetrics

__all__ = ["BUILTIN_DENY", "BUILTIN_POLICY", "PolicyManager", "ReloadResult"]

log = logging.getLogger("zgate.relay.policy")

#: Without a policy file every authenticated client may reach everything (and every flow
#: is still tracked and audited). A deployment that wants zero trust names a policy file.
BUILTIN_POLICY: Final = "default: allow\n"

#: What a relay following a control plane enforces until it has a policy from it (no cached
#: snapshot and the control plane unreachable, or none published yet): it fails closed.
BUILTIN_DENY: Final = "default: deny\n"


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did: the version now running, and the error if the new one was refused."""

    ok: bool
    version: str
    error: str | None = None
    changed: bool = False

    def as_dict(self) -> dict[str, object]:
        """For the /reload endpoint."""
        return {
            "ok": self.ok,
            "version": self.version,
            "error": self.error,
            "changed": self.changed,
        }


class PolicyManager:
    """Holds the running policy version and replaces it safely."""

    def __init__(
        self,
        path: Path | None,
        *,
        geoip_available: bool,
        metrics: RelayMetrics,
        relay_name: str,
        audit: Callable[[AuditEvent], object],
        apply: Callable[[CompiledPolicy], int] | None = None,
    ) -> None:
        self.path = path
        self.geoip_available = geoip_available
        self.metrics = metrics
        self.relay_name = relay_name
        self.audit = audit
        self.apply = apply
        self.current: CompiledPolicy | None = None
        #: The policy text and its name when it came as text (from the control plane), not
        #: from ``path``: a reload (SIGHUP, POST /reload) compiles that text again.
        self._text: tuple[str, str] | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._lock = asyncio.Lock()

    def _load(self) -> CompiledPolicy:
        now = datetime.now(UTC)
        if self._text is not None:
            text, name = self._text
            return self._compile_text(text, name)
        if self.path is None:
            return load_and_compile(
                BUILTIN_POLICY,
                geoip_available=self.geoip_available,
                now=now,
                name="<built-in: allow all>",
            )
        return load_and_compile(self.path, geoip_available=self.geoip_available, now=now)

    def _compile_text(self, text: str, name: str) -> CompiledPolicy:
        return load_and_compile(
            text, geoip_available=self.geoip_available, now=datetime.now(UTC), name=name
        )

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load_initial(self) -> CompiledPolicy:
        """Load at start-up; raises PolicyError (the relay must not start without one)."""
        self._stamp = self._file_stamp()
        compiled = self._load()
        self._install(compiled, "file", changed=True)
        if self.path is None:
            log.warning(
                "no policy file: every authenticated client may reach everything "
                "(flows are still tracked and audited); set --policy FILE"
            )
        return compiled

    def load_initial_text(self, text: str, name: str) -> CompiledPolicy:
        """Load policy text at start-up (a cached control-plane snapshot, or
        :data:`BUILTIN_DENY`); raises PolicyError. Reloads then compile this text again
        until :meth:`install_text` replaces it."""
        if self.path is not None:
            raise ValueError("a policy file and a policy text exclude each other")
        compiled = self._compile_text(text, name)
        self._text = (text, name)
        self._install(compiled, "control", changed=True)
        return compiled

    async def install_text(self, text: str, name: str, source: str = "control") -> ReloadResult:
        """Check and swap in policy text (from the control plane), compiled off the event
        loop; a text that fails any step is refused (logged, counted, audited) and the
        running version stays."""
        async with self._lock:
            assert self.current is not None
            try:
                compiled = await asyncio.to_thread(self._compile_text, text, name)
            except PolicyError as exc:
                return self._refused(str(exc), source)
            except Exception as exc:
                log.exception("policy compilation failed unexpectedly")
                return self._refused(f"{type(exc).__name__}: {exc}", source)
            self._text = (text, name)
            changed = compiled.version != self.current.version
            if changed:
                self._install(compiled, source, changed=True)
            else:
                self.metrics.policy_reloads["ok"].inc()
                self.metrics.policy_last_reload_ok.set(1)
                log.info("policy unchanged", extra={"version": compiled.version, "source": source})
            return ReloadResult(True, compiled.version, None, changed)

    def file_changed(self) -> bool:
        """Whether the policy file changed since it was last read (a cheap stat)."""
        return self.path is not None and self._file_stamp() != self._stamp

    async def reload(self, source: str) -> ReloadResult:
        """Read, check and swap in the policy file; keep the old one if anything fails."""
        async with self._lock:
            self._stamp = self._file_stamp()
            assert self.current is not None
            try:
                compiled = await asyncio.to_thread(self._load)
            except PolicyError as exc:
                return self._refused(str(exc), source)
            except Exception as exc:
                log.exception("policy reload failed unexpectedly")
                return self._refused(f"{type(exc).__name__}: {exc}", source)
            changed = compiled.version != self.current.version
            if changed:
                self._install(compiled, source, changed=True)
            else:
                self.metrics.policy_reloads["ok"].inc()
                self.metrics.policy_last_reload_ok.set(1)
                log.info(
                    "policy reloaded: unchanged",
                    extra={"version": compiled.version, "source": source},
                )
            return ReloadResult(True, compiled.version, None, changed)

    def _install(self, compiled: CompiledPolicy, source: str, *, changed: bool) -> None:
        previous = self.current
        self.current = compiled
        ended = self.apply(compiled) if self.apply is not None and previous is not None else 0
        m = self.metrics
        if previous is not None:
            m.policy_version.remove(previous.version)
        m.policy_version.labels(compiled.version).set(1)
        m.watch_rules(compiled.rule_ids)
        m.policy_reloads["ok"].inc()
        m.policy_last_reload_ok.set(1)
        # Without a file or text, the start-up warning says it all.
        if self.path is not None or self._text is not None:
            log.info(
                "policy loaded",
                extra={
                    "version": compiled.version,
                    "rules": len(compiled.rules),
                    "source": source,
                    "policy": self._text[1] if self._text is not None else str(self.path),
                    "flows_ended": ended,
                },
            )
        self.audit(
            PolicyLoaded(
                ts=datetime.now(UTC),
                relay=self.relay_name,
                version=compiled.version,
                source=_source(source),
                rules=len(compiled.rules),
            )
        )

    def _refused(self, error: str, source: str) -> ReloadResult:
        assert self.current is not None
        m = self.metrics
        m.policy_reloads["refused"].inc()
        m.policy_last_reload_ok.set(0)
        log.error(
            "policy refused; keeping the running version",
            extra={"error": error, "source": source, "running": self.current.version},
        )
        self.audit(
            PolicyRefused(
                ts=datetime.now(UTC),
                relay=self.relay_name,
                version=None,
                source=_source(source),
                rules=None,
                error=error,
            )
        )
        return ReloadResult(False, self.current.version, error)


_SOURCES: Final[dict[str, PolicySource]] = {
    "file": "file",
    "reload": "reload",
    "sighup": "sighup",
    "control": "control",
}


def _source(source: str) -> PolicySource:
    return _SOURCES.get(source, "reload")

"""What a relay following a control plane enforces before it serves: the cached snapshot
if there is one, else nothing but a built-in deny-all policy (it fails closed)."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from zgate_pki import PkiError
from zgate_policy import CompiledPolicy, PolicyError
from zgate_relay.control.apply import RevocationTarget, parse_connectors
from zgate_relay.control.cache import CACHE_NAME, load_cache
from zgate_relay.control.state import ControlState
from zgate_relay.policy import BUILTIN_DENY, PolicyManager

__all__ = ["Boot", "load_boot"]

log = logging.getLogger("zgate.relay.control")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The policy's name while the relay has nothing from its control plane.
NOTHING_YET = "<built-in: deny, waiting for the control plane>"


@dataclass
class Boot:
    """The state to start from and when it was cached (None: no cache)."""

    state: ControlState
    cached_at: datetime | None
    cache_path: Path

    def install_policy(self, policies: PolicyManager) -> CompiledPolicy:
        """Make the cached policy (or deny-all) the running one; raises PolicyError only if
        even the built-in deny-all policy cannot be compiled."""
        policy = self.state.policy
        if policy is not None:
            try:
                return policies.load_initial_text(policy.yaml, policy.name)
            except PolicyError as exc:
                log.error(
                    "the cached policy cannot be used on this relay: enforcing the built-in "
                    "deny-all policy until the control plane sends one that can",
                    extra={"policy": policy.name, "error": str(exc)},
                )
                self._start_over(policy=None)
        elif self.cached_at is None:
            log.warning(
                "FOLLOWING A CONTROL PLANE WITHOUT A CACHED SNAPSHOT: every flow is denied "
                "(built-in deny-all policy, failing closed) until the control plane answers"
            )
        return policies.load_initial_text(BUILTIN_DENY, NOTHING_YET)

    def install_revocations(self, verifier: RevocationTarget) -> None:
        """Refuse the cached revocations from the first handshake on."""
        if self.cached_at is None:
            return
        try:
            serials = [int(s, 16) for s in self.state.blocked]
            crl = self.state.crl_pem.encode() if self.state.crl_pem else None
            verifier.set_revocations(crl, serials)
        except (PkiError, ValueError) as exc:
            log.error(
                "the cached revocations cannot be used (another CA?): the CRL file stays "
                "in force until the control plane sends them",
                extra={"error": str(exc)},
            )
            self._start_over(crl_pem="", blocked=())

    def connectors(self) -> dict[str, list[Network]]:
        """The cached connectors' allowed prefixes."""
        try:
            return parse_connectors(self.state.connectors)
        except ValueError as exc:
            log.error("the cached connectors are unusable", extra={"error": str(exc)})
            self._start_over(connectors={})
            return {}

    def _start_over(self, **enforced: Any) -> None:
        # Position 0 makes the control plane send a whole snapshot, applied in full. The
        # part that could not be used is replaced by what is enforced instead, so the state
        # says what runs (a later snapshot equal to it needs no step).
        self.state = replace(self.state, seq=0, **enforced)


def load_boot(state_dir: Path) -> Boot:
    """The cache in ``state_dir``, if any (a corrupt one is moved aside)."""
    path = state_dir / CACHE_NAME
    cached = load_cache(path)
    if cached is None:
        return Boot(ControlState(), None, path)
    log.info(
        "enforcing the cached control-plane snapshot",
        extra={
            "seq": cached.state.seq,
            "saved_at": cached.saved_at.isoformat(),
            "policy": cached.state.policy.name if cached.state.policy else None,
        },
    )
    return Boot(cached.state, cached.saved_at, path)

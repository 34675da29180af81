"""Applying one step from the control plane to the running relay: the policy manager, the
certificate verifier (then the live sessions it now refuses end at once), the connectors'
allowed prefixes. A step that cannot be applied raises :class:`ApplyFailed` and leaves
what was running in force."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Protocol

from zgate_pki import PkiError
from zgate_relay.control.plan import (
    EndSession,
    InstallConnectors,
    InstallPolicy,
    InstallRevocations,
    Step,
)
from zgate_relay.policy import BUILTIN_DENY, PolicyManager
from zgate_relay.sites import SiteRoutes

__all__ = ["Applier", "ApplyFailed", "RevocationTarget", "parse_connectors"]

log = logging.getLogger("zgate.relay.control")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Why a session asked to end by the control plane ended (its audit record's reason).
OPERATOR_ENDED = "ended by operator"

#: The name of the policy enforced while the control plane has published none.
NO_POLICY_NAME = "<built-in: deny, no policy published>"


class ApplyFailed(Exception):
    """A step could not be applied; ``kind`` is the change kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class RevocationTarget(Protocol):
    """The part of :class:`zgate_pki.ChainVerifier` that takes revocations."""

    def set_revocations(self, crl_pem: bytes | None, blocked: Collection[int] = ()) -> None:
        """Refuse the CRL's serials and ``blocked``; PkiError if the CRL does not verify."""


def parse_connectors(connectors: Mapping[str, Collection[str]]) -> dict[str, list[Network]]:
    """CIDR text to networks; raises ValueError naming the connector and the prefix."""
    out: dict[str, list[Network]] = {}
    for ident, prefixes in connectors.items():
        nets = out.setdefault(ident, [])
        for prefix in prefixes:
            try:
                nets.append(ipaddress.ip_network(prefix.strip()))
            except ValueError as exc:
                raise ValueError(f"connector {ident}: {exc}") from None
    return out


class Applier:
    """Applies steps to the relay's parts."""

    def __init__(
        self,
        *,
        policies: PolicyManager,
        verifier: RevocationTarget,
        end_revoked: Callable[[], int],
        sites: SiteRoutes,
        connectors_changed: Callable[[], None] = lambda: None,
        end_session: Callable[[str, str], bool] = lambda session, reason: False,
    ) -> None:
        self.policies = policies
        self.verifier = verifier
        self.end_revoked = end_revoked
        self.sites = sites
        self.connectors_changed = connectors_changed
        self.end_session = end_session

    async def apply(self, step: Step) -> None:
        """Apply one step; raises ApplyFailed."""
        if isinstance(step, InstallPolicy):
            await self._policy(step)
        elif isinstance(step, InstallRevocations):
            self.revocations(step.crl_pem, step.blocked)
        elif isinstance(step, EndSession):
            self._end_session(step)
        else:
            self._connectors(step)

    def _end_session(self, step: EndSession) -> None:
        # A session already gone is no failure: ending it is what was asked.
        ended = self.end_session(step.session, OPERATOR_ENDED)
        log.info(
            "session end asked by the control plane",
            extra={"session": step.session, "seq": step.seq, "was_live": ended},
        )

    async def _policy(self, step: InstallPolicy) -> None:
        if step.policy is None:
            log.warning("the control plane has published no policy: denying everything")
            text, name = BUILTIN_DENY, NO_POLICY_NAME
        else:
            text, name = step.policy.yaml, step.policy.name
        result = await self.policies.install_text(text, name, "control")
        if not result.ok:
            raise ApplyFailed("policy", f"{name} refused: {result.error}")

    def revocations(self, crl_pem: str, blocked: Collection[str]) -> int:
        """Install the CRL and block list, then end the sessions they now refuse; returns
        how many connections were closed. Raises ApplyFailed (the old lists stay)."""
        try:
            serials = [int(s, 16) for s in blocked]
            self.verifier.set_revocations(crl_pem.encode() if crl_pem else None, serials)
        except (PkiError, ValueError) as exc:
            raise ApplyFailed("revocation", f"revocations refused: {exc}") from None
        ended = self.end_revoked()
        log.info(
            "revocations installed",
            extra={"blocked": len(serials), "crl": bool(crl_pem), "connections_ended": ended},
        )
        return ended

    def _connectors(self, step: InstallConnectors) -> None:
        try:
            allowed = parse_connectors(step.connectors)
        except ValueError as exc:
            raise ApplyFailed("connectors", str(exc)) from None
        result = self.sites.replace(allowed)
        for session, prefixes in result.withdrawn.items():
            log.warning(
                "connector routes withdrawn by the control plane",
                extra={"session": session, "prefixes": [str(p) for p in prefixes]},
            )
        self.connectors_changed()
        log.info(
            "connectors installed",
            extra={"connectors": {i: [str(n) for n in nets] for i, nets in allowed.items()}},
        )

"""What both engines' client-certificate shims decide alike, without touching either engine.

The aioquic shim (:mod:`zgate_proto.engines._aioquic_mtls`) and the qh3 shim
(:mod:`zgate_proto.engines._qh3_mtls`) reach their TLS code through different hooks, but
must refuse a handshake for the same reasons, with the same alerts and texts, verify the
client's chain the same way and report each refusal once: that shared part lives here, so
that the two engines cannot drift apart. Each shim keeps only its engine's hooks and turns
:data:`REFUSAL_ALERTS` into its engine's alert exception.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Final, Literal

from cryptography import x509

from zgate_pki import REFUSAL_REASONS, CertificateRefused, ChainVerifier, Identity, PkiError
from zgate_proto.engines.base import RefusalCallback

__all__ = [
    "CRYPTO_ERRORS",
    "HANDSHAKE_REFUSAL_REASONS",
    "REFUSAL_ALERTS",
    "HandshakeRefusal",
    "RefusalRecord",
    "utcnow",
    "verify_client_chain",
]

logger = logging.getLogger(__name__)

HandshakeRefusal = Literal[
    "no_certificate",
    "unknown_ca",
    "expired",
    "revoked",
    "bad_certificate",
    "tls_version",
    "handshake_failed",
]
#: Every value a refusal reason can take (create the metric's labelled series up front).
HANDSHAKE_REFUSAL_REASONS: Final[tuple[HandshakeRefusal, ...]] = (
    *REFUSAL_REASONS,
    "tls_version",
    "handshake_failed",
)

#: The TLS alert (its description code, RFC 8446 section 6.2) that ends a handshake refused
#: for each certificate reason, with a short text for the client: the detail (which may name
#: serials or issuers) stays with the relay.
REFUSAL_ALERTS: Final[Mapping[str, tuple[int, str]]] = {
    "no_certificate": (116, "client certificate required"),  # certificate_required
    "unknown_ca": (48, "unknown certificate authority"),  # unknown_ca
    "expired": (45, "certificate expired"),  # certificate_expired
    "revoked": (44, "certificate revoked"),  # certificate_revoked
    "bad_certificate": (42, "bad certificate"),  # bad_certificate
}

#: QUIC's CRYPTO_ERROR range (RFC 9000 section 20.1): 0x100 plus a TLS alert description.
CRYPTO_ERRORS: Final = range(0x100, 0x200)


def utcnow() -> datetime:
    """The default wall clock certificates are checked against (engines' ``now`` is
    monotonic, not a date)."""
    return datetime.now(UTC)


def verify_client_chain(
    verifier: ChainVerifier,
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    now: datetime,
) -> Identity:
    """The client's identity, or CertificateRefused: reloads the CA and CRL first when they
    changed (keeping the previous ones when the new files are bad), and fails closed with
    ``bad_certificate`` should the verifier itself crash, so that a verifier bug cannot
    escape into the UDP pump."""
    try:
        if verifier.reload_if_changed():
            logger.info("reloaded the CA certificate and CRL")
    except PkiError as exc:
        logger.warning("keeping the previous CA certificate and CRL: %s", exc)
    try:
        return verifier.verify(leaf, intermediates, now)
    except CertificateRefused:
        raise
    except Exception as exc:
        logger.exception("client certificate verification crashed")
        raise CertificateRefused("bad_certificate", f"verification error: {exc!r}") from None


class RefusalRecord:
    """Why one server handshake was refused: the first, most specific reason wins, and
    ``on_refused`` hears of it exactly once."""

    __slots__ = ("_on_refused", "refusal")

    def __init__(self, on_refused: RefusalCallback | None = None) -> None:
        self.refusal: tuple[HandshakeRefusal, str] | None = None
        self._on_refused = on_refused

    def refuse(self, reason: HandshakeRefusal, detail: str) -> None:
        """Record a refusal unless one is recorded already."""
        if self.refusal is not None:
            return
        self.refusal = (reason, detail)
        if self._on_refused is not None:
            try:
                self._on_refused(reason, detail)
            except Exception:
                # A logging/metrics hook must not break the TLS state machine.
                logger.exception("on_refused callback failed")

    def alert(self, reason: HandshakeRefusal, detail: str) -> tuple[int, str]:
        """Record a refusal for a certificate ``reason``; the alert that ends the handshake
        (its description code and text, :data:`REFUSAL_ALERTS`)."""
        self.refuse(reason, detail)
        return REFUSAL_ALERTS[reason]

    def tls_failed(self, exc: Exception, *, protocol_version: bool) -> None:
        """The engine's TLS code raised ``exc`` during the handshake: ``tls_version`` when
        it was the protocol_version alert (the client offers no TLS 1.3), else
        ``handshake_failed``."""
        reason: HandshakeRefusal = "tls_version" if protocol_version else "handshake_failed"
        self.refuse(reason, str(exc) or type(exc).__name__)

    def closing(self, error_code: int) -> None:
        """The connection closes with ``error_code`` before the handshake completed: a TLS
        alert there is a refusal (ours are recorded already; this catches the client's)."""
        if error_code in CRYPTO_ERRORS:
            self.refuse(
                "handshake_failed", f"TLS alert {error_code - CRYPTO_ERRORS.start} from the client"
            )

"""Why a connection attempt failed, said the way an operator can act on it.

A failure is *permanent* when trying again cannot help until someone changes a file or the
relay's PKI (the relay's certificate is not signed by our CA or not valid for the name we
dial, the relay refused our certificate); the agent retries those on a long backoff and says
what to fix. Everything else (no answer, refused, unreachable, a lost tunnel) is *transient*
and retried quickly.

In TLS 1.3 the client's certificate is checked after the client has finished its side of
the handshake: a refusal by the relay arrives as a CONNECTION_CLOSE with a CRYPTO_ERROR
code (0x100 + the TLS alert) after our handshake completed, while our own verification of
the relay's certificate fails before it, as a close we send ourselves.

Engines word (and code) their own refusals differently (one says certificate_expired where
another says bad_certificate for the same certificate), so when our side refused the
relay's certificate we look at that certificate ourselves (names, dates, issuer) and say
what is wrong with it; the alert and the engine's reason are the fallback.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

__all__ = [
    "CRYPTO_ERROR",
    "LOSS_CAUSES",
    "AlertDescription",
    "CloseInfo",
    "certificate_names",
    "close_info",
    "describe_close",
    "describe_refusal",
    "describe_timeout",
    "loss_cause",
]

#: Why a tunnel or an attempt ended, as the agent's metrics count it:
#: liveness: nothing heard from the relay for the liveness deadline;
#: reset: a stateless reset (a relay that lost the connection's state);
#: closed: the relay closed the connection or ended the session;
#: refused: the relay refused us (certificate, session request), or a permanent failure;
#: idle_timeout: QUIC's idle timeout (liveness off);
#: unreachable: no answer to an attempt; timeout: an attempt took too long;
#: error: anything else (a local TLS or socket error).
LOSS_CAUSES = (
    "liveness",
    "reset",
    "closed",
    "refused",
    "idle_timeout",
    "unreachable",
    "timeout",
    "error",
)

#: QUIC's CRYPTO_ERROR range: 0x100 + TLS alert (RFC 9001 section 4.8).
CRYPTO_ERROR = 0x100


class AlertDescription(enum.IntEnum):
    """TLS alerts (RFC 8446 section 6, RFC 7301 for no_application_protocol)."""

    close_notify = 0
    unexpected_message = 10
    bad_record_mac = 20
    record_overflow = 22
    handshake_failure = 40
    bad_certificate = 42
    unsupported_certificate = 43
    certificate_revoked = 44
    certificate_expired = 45
    certificate_unknown = 46
    illegal_parameter = 47
    unknown_ca = 48
    access_denied = 49
    decode_error = 50
    decrypt_error = 51
    protocol_version = 70
    insufficient_security = 71
    internal_error = 80
    inappropriate_fallback = 86
    user_canceled = 90
    missing_extension = 109
    unsupported_extension = 110
    unrecognized_name = 112
    bad_certificate_status_response = 113
    unknown_psk_identity = 115
    certificate_required = 116
    no_application_protocol = 120


@dataclass(frozen=True, slots=True)
class CloseInfo:
    """A connection close as the agent saw it."""

    error_code: int
    reason: str
    #: The relay sent the close (else our own QUIC/TLS stack closed it).
    by_peer: bool
    #: Our side of the TLS handshake had completed when the connection closed.
    handshake_done: bool
    #: The certificate the relay presented, if the handshake got that far.
    peer_certificate: x509.Certificate | None = None


def close_info(
    error_code: int,
    reason: str,
    *,
    by_peer: bool,
    handshake_done: bool,
    peer_chain: Sequence[bytes],
) -> CloseInfo:
    """A :class:`CloseInfo` from a session's ConnectionClosed and the engine's
    ``peer_chain`` (DER, leaf first; empty when the relay sent no certificate)."""
    cert = None
    if peer_chain:
        try:
            cert = x509.load_der_x509_certificate(peer_chain[0])
        except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError
            cert = None
    return CloseInfo(error_code, reason, by_peer, handshake_done, cert)


@dataclass(frozen=True, slots=True)
class _Context:
    ca: Path
    cert: Path
    server_name: str
    kind: str


def _alert(code: int) -> int | None:
    if CRYPTO_ERROR <= code < CRYPTO_ERROR + 0x100:
        return code - CRYPTO_ERROR
    return None


def _alert_name(alert: int) -> str:
    try:
        return AlertDescription(alert).name
    except ValueError:
        return f"alert {alert}"


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for (its subjectAltName)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # Extensions are parsed on first read; a corrupt set raises more than ValueError.
    except (
        x509.ExtensionNotFound,
        ValueError,
        TypeError,
        x509.DuplicateExtension,
        x509.UnsupportedGeneralNameType,
    ):
        return []
    names: list[str] = list(san.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _when(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _valid_for(cert: x509.Certificate, name: str) -> bool:
    """Whether the certificate names ``name`` (an IP address, or a DNS name that one of its
    names matches, ``*.`` standing for one label)."""
    names = certificate_names(cert)
    if _is_ip(name):
        return any(
            _is_ip(n) and ipaddress.ip_address(n) == ipaddress.ip_address(name) for n in names
        )
    wanted = name.lower().rstrip(".")
    for candidate in (n.lower().rstrip(".") for n in names if not _is_ip(n)):
        if candidate == wanted:
            return True
        if candidate.startswith("*.") and wanted.partition(".")[2] == candidate[2:]:
            return True
    return False


def _issued_by_ca(cert: x509.Certificate, ca: Path) -> bool | None:
    """Whether one of the certificates in ``ca`` signed ``cert`` (None: cannot tell, the CA
    file is unreadable)."""
    try:
        authorities = x509.load_pem_x509_certificates(ca.read_bytes())
    except (OSError, ValueError, x509.InvalidVersion):
        return None
    for authority in authorities:
        try:
            cert.verify_directly_issued_by(authority)
        except Exception:  # a wrong issuer, signature or key type: not this one
            continue
        return True
    return False


def _name_mismatch(cert: x509.Certificate | None, ctx: _Context) -> str:
    flag = "--relay-ip" if _is_ip(ctx.server_name) else "--relay-name"
    names = ", ".join(certificate_names(cert)) if cert is not None else "?"
    return (
        f"the relay's certificate is not valid for name {ctx.server_name} (it names: "
        f"{names}); pass --server-name with one of those, or re-issue it with "
        f"`zgate pki init {flag} {ctx.server_name}`"
    )


def _not_signed(reason: str, ctx: _Context) -> str:
    why = f" ({reason})" if reason else ""
    return (
        f"the relay's certificate is not signed by --ca {ctx.ca}{why}; use the CA "
        f"that issued the relay's certificate"
    )


def _certificate_problem(cert: x509.Certificate, close: CloseInfo, ctx: _Context) -> str | None:
    """What is wrong with the relay's certificate, found by looking at it; None if nothing
    we can see (then the engine's alert and reason tell)."""
    if not _valid_for(cert, ctx.server_name):
        return _name_mismatch(cert, ctx)
    now = datetime.now(UTC)
    if now < cert.not_valid_before_utc:
        return (
            f"the relay's certificate is not valid before "
            f"{_when(cert.not_valid_before_utc)}; check this machine's clock and the relay's"
        )
    if now > cert.not_valid_after_utc:
        return (
            f"the relay's certificate expired on {_when(cert.not_valid_after_utc)}; renew it "
            f"on the relay (`zgate pki init`), or check this machine's clock"
        )
    if _issued_by_ca(cert, ctx.ca) is False:
        return _not_signed(close.reason, ctx)
    return None


def _local(close: CloseInfo, ctx: _Context) -> str:
    """Our own TLS stack refused the relay (or the connection failed on our side)."""
    reason = close.reason
    cert = close.peer_certificate
    alert = _alert(close.error_code)
    if alert is not None and cert is not None:
        found = _certificate_problem(cert, close, ctx)
        if found is not None:
            return found
    if reason.startswith("hostname ") or "doesn't match" in reason:
        return _name_mismatch(cert, ctx)
    if alert == AlertDescription.certificate_expired:
        if cert is not None and datetime.now(UTC) < cert.not_valid_before_utc:
            return (
                f"the relay's certificate is not valid before "
                f"{_when(cert.not_valid_before_utc)}; check this machine's clock and the relay's"
            )
        when = f" on {_when(cert.not_valid_after_utc)}" if cert is not None else ""
        return (
            f"the relay's certificate expired{when}; renew it on the relay "
            f"(`zgate pki init`), or check this machine's clock"
        )
    if alert == AlertDescription.bad_certificate:
        return _not_signed(reason, ctx)
    if alert == AlertDescription.no_application_protocol:
        return "the server at this address does not speak HTTP/3 (ALPN h3): is it a zgate relay?"
    if alert is not None:
        return f"TLS handshake with the relay failed: {reason or _alert_name(alert)}"
    return f"connection to the relay failed: {reason or f'error 0x{close.error_code:x}'}"


def _by_relay(close: CloseInfo, ctx: _Context) -> str | None:
    """The relay ended the handshake with a TLS alert; None if it is not one."""
    alert = _alert(close.error_code)
    if alert is None:
        return None
    ours = f"our certificate --cert {ctx.cert}"
    if alert == AlertDescription.certificate_revoked:
        return (
            f"the relay refused {ours}: it has been revoked; issue a new one "
            f"(`zgate pki issue {ctx.kind} ID`) and use it"
        )
    if alert == AlertDescription.certificate_expired:
        return (
            f"the relay refused {ours}: it has expired or is not valid yet by the relay's clock;"
            f" issue a new one (`zgate pki issue {ctx.kind} ID`) or check both clocks"
        )
    if alert == AlertDescription.unknown_ca:
        return (
            f"the relay refused {ours}: it was not issued by the relay's CA; use a "
            f"certificate from the relay's PKI (`zgate pki issue {ctx.kind} ID`)"
        )
    if alert == AlertDescription.certificate_required:
        return f"the relay refused the connection: it requires a client certificate ({ours})"
    if alert == AlertDescription.decrypt_error:
        return (
            f"the relay refused {ours}: the handshake signature does not verify "
            f"(is --key the key of --cert?)"
        )
    if alert == AlertDescription.bad_certificate:
        return f"the relay refused {ours}: {close.reason or 'bad certificate'}"
    if alert == AlertDescription.protocol_version:
        return "the relay refused the handshake: no TLS version in common (zgate needs TLS 1.3)"
    return f"the relay refused the TLS handshake: {close.reason or _alert_name(alert)}"


def describe_close(
    close: CloseInfo, *, ca: Path, cert: Path, server_name: str, kind: str = "client"
) -> tuple[str, bool]:
    """(one line for the operator, permanent?) for a connection that closed while opening;
    ``kind`` is what `zgate pki issue` makes for us (client or connector)."""
    ctx = _Context(ca, cert, server_name, kind)
    alert = _alert(close.error_code)
    if close.by_peer:
        refused = _by_relay(close, ctx)
        if refused is not None:
            return refused, True
        return (
            f"the relay closed the connection: {close.reason or f'error 0x{close.error_code:x}'}",
            False,
        )
    if alert is not None:
        return _local(close, ctx), True
    return _local(close, ctx), False


def loss_cause(close: CloseInfo | None, *, refused: bool) -> str:
    """Which of LOSS_CAUSES ended a connection that closed (``close``) or whose session the
    relay refused or ended without closing it (``close`` None)."""
    if close is None:
        return "refused" if refused else "closed"
    reason = close.reason.lower()
    if "stateless reset" in reason:
        return "reset"
    if not close.by_peer and not close.reason and close.error_code == 0 and close.handshake_done:
        # Neither side sent a CONNECTION_CLOSE and no timer ran out: how qh3's core ends a
        # connection on a stateless reset (seen in the lab against a restarted relay that
        # kept its reset key); aioquic does not recognise resets at all.
        return "reset"
    if "idle timeout" in reason:
        return "idle_timeout"
    if _alert(close.error_code) is not None:
        return "refused"
    if close.by_peer:
        return "closed"
    return "error"


def describe_refusal(status: int, reason: str) -> str:
    """One line for a CONNECT-IP request the relay refused with ``status`` (``reason``: the
    session core's words, kept for the statuses that need no more). Both limits below are
    transient: sessions end and free their room, so the agent retries on its short backoff,
    which doubles up to --backoff-max and spreads many refused agents apart."""
    if status == 503:
        return (
            "the relay is full: it refused a new session (503: its session limit "
            "--max-sessions, or no tunnel address left); retrying with backoff"
        )
    if status == 429:
        return (
            "the relay refused a new session for this certificate (429): it already holds "
            "the most sessions one client may (--max-sessions-per-client on the relay); "
            "another device using the same certificate, or sessions of an earlier connection "
            "not timed out yet; retrying with backoff"
        )
    return reason


def describe_timeout(host: str, port: int, seconds: float, *, handshake_done: bool) -> str:
    """No (complete) answer from the relay within the connect timeout."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if handshake_done:
        return f"timed out after {seconds:g}s opening the tunnel with the relay at {where}"
    return (
        f"no answer from the relay at {where} within {seconds:g}s (is it running, and is "
        f"UDP port {port} reachable from here?)"
    )

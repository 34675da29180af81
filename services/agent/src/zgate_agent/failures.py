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
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aioquic.tls import AlertDescription
from cryptography import x509

__all__ = [
    "CRYPTO_ERROR",
    "CloseInfo",
    "certificate_names",
    "describe_close",
    "describe_timeout",
]

#: QUIC's CRYPTO_ERROR range: 0x100 + TLS alert (RFC 9001 section 4.8).
CRYPTO_ERROR = 0x100


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
    except (x509.ExtensionNotFound, ValueError):
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


def _local(close: CloseInfo, ctx: _Context) -> str:
    """Our own TLS stack refused the relay (aioquic's verify_certificate)."""
    reason = close.reason
    cert = close.peer_certificate
    alert = _alert(close.error_code)
    if reason.startswith("hostname ") or "doesn't match" in reason:
        flag = "--relay-ip" if _is_ip(ctx.server_name) else "--relay-name"
        names = ", ".join(certificate_names(cert)) if cert is not None else "?"
        return (
            f"the relay's certificate is not valid for name {ctx.server_name} (it names: "
            f"{names}); pass --server-name with one of those, or re-issue it with "
            f"`zgate pki init {flag} {ctx.server_name}`"
        )
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
        return (
            f"the relay's certificate is not signed by --ca {ctx.ca} ({reason}); use the CA "
            f"that issued the relay's certificate"
        )
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
    if alert == 116:  # certificate_required (RFC 8446); aioquic's enum lacks it
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


def describe_timeout(host: str, port: int, seconds: float, *, handshake_done: bool) -> str:
    """No (complete) answer from the relay within the connect timeout."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if handshake_done:
        return f"timed out after {seconds:g}s opening the tunnel with the relay at {where}"
    return (
        f"no answer from the relay at {where} within {seconds:g}s (is it running, and is "
        f"UDP port {port} reachable from here?)"
    )

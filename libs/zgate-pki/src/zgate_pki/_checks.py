"""Start-up checks of the certificate and key files an operator points a service at.

Each check turns one mistake into one `PkiFileError` whose message names the file, the flag
that gave it, what is wrong and what fixes it, so a service can print it as a single line
and exit. These run before any network or privileged work: a wrong file is found at start,
not as an opaque TLS alert on the first handshake.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from ._errors import PkiError
from ._x509 import _short

__all__ = [
    "IdentityFiles",
    "PkiFileError",
    "check_identity_files",
    "load_certificate_file",
    "load_private_key_file",
]

_KEY_MARKERS = (b"PRIVATE KEY-----",)
_CERT_MARKER = b"-----BEGIN CERTIFICATE-----"


class PkiFileError(PkiError):
    """A certificate or key file cannot be used; the message says which, why and the fix."""


def _label(path: Path, flag: str | None) -> str:
    return f"{flag} {path}" if flag else str(path)


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _read(path: Path, what: str, flag: str | None) -> bytes:
    label = _label(path, flag)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiFileError(f"{what} {label} does not exist") from None
    except IsADirectoryError:
        raise PkiFileError(f"{what} {label} is a directory, not a file") from None
    except PermissionError:
        try:
            st = path.stat()
            detail = (
                f" (mode {stat.S_IMODE(st.st_mode):04o}, owner {_owner(st.st_uid)}, "
                f"this process runs as {_owner(os.geteuid())})"
            )
        except OSError:
            detail = ""
        raise PkiFileError(
            f"cannot read {what} {label}: permission denied{detail}; make it readable by "
            f"this user (chown or chmod), or run as its owner"
        ) from None
    except OSError as exc:
        raise PkiFileError(f"cannot read {what} {label}: {exc.strerror or exc}") from None


def load_certificate_file(path: Path, what: str, flag: str | None = None) -> x509.Certificate:
    """The first certificate in a PEM file; PkiFileError for every way the file is wrong."""
    data = _read(path, what, flag)
    label = _label(path, flag)
    if _CERT_MARKER not in data:
        if any(marker in data for marker in _KEY_MARKERS):
            raise PkiFileError(
                f"{what} {label} holds a private key, not a certificate; "
                f"give the .pem certificate file"
            )
        raise PkiFileError(f"{what} {label} is not a PEM certificate (no BEGIN CERTIFICATE)")
    try:
        return x509.load_pem_x509_certificate(data)
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is no ValueError
        raise PkiFileError(
            f"{what} {label} is not a valid PEM certificate ({_short(exc)})"
        ) from None


def load_private_key_file(path: Path, what: str, flag: str | None = None) -> PrivateKeyTypes:
    """An unencrypted PEM private key; PkiFileError for every way the file is wrong."""
    data = _read(path, what, flag)
    label = _label(path, flag)
    if not any(marker in data for marker in _KEY_MARKERS):
        if _CERT_MARKER in data:
            raise PkiFileError(
                f"{what} {label} holds a certificate, not a private key; give the .key file"
            )
        raise PkiFileError(f"{what} {label} is not a PEM private key (no BEGIN PRIVATE KEY)")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise PkiFileError(
            f"{what} {label} is encrypted; zgate needs an unencrypted key (mode 0600)"
        ) from None
    except ValueError as exc:
        raise PkiFileError(
            f"{what} {label} is not a valid PEM private key ({_short(exc)})"
        ) from None
    except UnsupportedAlgorithm as exc:  # e.g. an EC key on a curve OpenSSL does not know
        raise PkiFileError(
            f"{what} {label} is a private key of an unsupported kind ({exc})"
        ) from None


def _public_der(key: object) -> bytes:
    public = key.public_key()  # type: ignore[attr-defined]
    der: bytes = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _check_validity(cert: x509.Certificate, what: str, label: str, now: datetime) -> None:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        raise PkiFileError(
            f"{what} {label} is not valid yet: from {start:%Y-%m-%d %H:%M:%S} UTC "
            f"(now {now:%Y-%m-%d %H:%M:%S} UTC); check this machine's clock"
        )
    if now > end:
        raise PkiFileError(
            f"{what} {label} expired on {end:%Y-%m-%d %H:%M:%S} UTC; issue a new one "
            f"(zgate pki issue ..., or zgate pki init for the relay)"
        )


@dataclass(frozen=True, slots=True)
class IdentityFiles:
    """What `check_identity_files` loaded: usable as they are."""

    certificate: x509.Certificate
    key: PrivateKeyTypes
    ca: x509.Certificate | None


def check_identity_files(
    cert: Path,
    key: Path,
    *,
    ca: Path | None = None,
    cert_flag: str | None = "--cert",
    key_flag: str | None = "--key",
    ca_flag: str | None = "--ca",
    what: str = "certificate",
    now: datetime | None = None,
) -> IdentityFiles:
    """Load and cross-check a certificate, its key and (optionally) the CA that must have
    signed it: each file readable and of the right kind, the key matching the certificate,
    the certificate and the CA within their validity, the certificate signed by the CA."""
    when = now or datetime.now(UTC)
    ca_cert = None
    if ca is not None:
        ca_cert = load_certificate_file(ca, "CA certificate", ca_flag)
        _check_validity(ca_cert, "CA certificate", _label(ca, ca_flag), when)
    leaf = load_certificate_file(cert, what, cert_flag)
    private = load_private_key_file(key, "private key", key_flag)
    cert_label, key_label = _label(cert, cert_flag), _label(key, key_flag)
    if _public_der(private) != _public_der(leaf):
        raise PkiFileError(
            f"private key {key_label} does not belong to {what} {cert_label}; "
            f"give the key that was issued with it"
        )
    _check_validity(leaf, what, cert_label, when)
    if ca_cert is not None and ca is not None:
        try:
            leaf.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise PkiFileError(
                f"{what} {cert_label} was not signed by the CA in {_label(ca, ca_flag)} "
                f"(issuer {leaf.issuer.rfc4514_string()!r}); use the CA that issued it"
            ) from None
    return IdentityFiles(leaf, private, ca_cert)

"""The one exception base of zgate_pki and the refusal raised by chain verification."""

from __future__ import annotations

from typing import Final, Literal

__all__ = ["REFUSAL_REASONS", "CertificateRefused", "PkiError", "RefusalReason"]

RefusalReason = Literal["no_certificate", "unknown_ca", "expired", "revoked", "bad_certificate"]

#: Every value ``CertificateRefused.reason`` can take (fixed, so usable as a metric label).
REFUSAL_REASONS: Final[tuple[RefusalReason, ...]] = (
    "no_certificate",
    "unknown_ca",
    "expired",
    "revoked",
    "bad_certificate",
)


class PkiError(Exception):
    """Base of every error raised by zgate_pki; the message is meant for an operator."""


class CertificateRefused(PkiError):
    """A peer certificate failed verification; ``reason`` is one of `REFUSAL_REASONS`."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: RefusalReason = reason
        self.detail = detail

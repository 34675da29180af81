"""Fuzz PEM/DER certificate, CRL, key and index loading and the verifier's parsing:
zgate_pki (what a relay reads from its CA/CRL files, a CRL pushed by the control plane,
and the certificate a client presents in its TLS handshake).

The first input byte picks what the rest is (bits 0-1) and whether it is wrapped in PEM
armour first (bit 2), so the fuzzer mutates DER, not base64:

0. a certificate: ``load_certificate`` returns one or raises PkiError; a loaded one goes
   through ``identity_from_certificate`` (PkiError) and ``ChainVerifier.verify`` against
   the fuzz seed CA (CertificateRefused, a PkiError);
1. a CRL: ``load_crl`` (PkiError), then ``ChainVerifier.set_revocations`` (PkiError; a CRL
   the seed CA did not sign leaves the revocations as they were);
2. a private key: ``load_ca_key`` (PkiError);
3. an ``index.json``: ``parse_index`` (PkiError).

Nothing else may escape. The trust anchor is ``fuzz/pki_anchor.pem``, a CA made for these
seeds only (``fuzz/seeds.py``); its key was thrown away.
"""

from __future__ import annotations

import base64
import contextlib
import sys
from datetime import timedelta
from pathlib import Path

from harness import check, instrumented, main

with instrumented(__name__ == "__main__"):
    from zgate_pki import ChainVerifier, PkiError, identity_from_certificate
    from zgate_pki._index import parse_index
    from zgate_pki._x509 import load_ca_key, load_certificate, load_crl

TARGETS = (
    "zgate_pki._x509",
    "zgate_pki._verifier",
    "zgate_pki._identity",
    "zgate_pki._index",
    "zgate_pki._names",
)
ANCHOR = Path(__file__).with_name("pki_anchor.pem")
VERIFIER = ChainVerifier(ANCHOR)
NOW = VERIFIER.ca_certificate.not_valid_before_utc + timedelta(days=1)
LABELS = ("CERTIFICATE", "X509 CRL", "PRIVATE KEY", "")


def _pem(label: str, der: bytes) -> bytes:
    body = base64.encodebytes(der).decode("ascii")
    return f"-----BEGIN {label}-----\n{body}-----END {label}-----\n".encode("ascii")


def _certificate(data: bytes) -> None:
    try:
        cert = load_certificate(data, "fuzz input")
    except PkiError:
        return
    try:
        identity = identity_from_certificate(cert)
    except PkiError:
        identity = None
    try:
        verified = VERIFIER.verify(cert, [], NOW)
    except PkiError:
        return
    check(identity is not None and verified.ident == identity.ident, "verified, no identity")


def _crl(data: bytes) -> None:
    before = VERIFIER.revoked_serials()
    try:
        crl = load_crl(data, "fuzz input")
        VERIFIER.set_revocations(data)
    except PkiError:
        check(VERIFIER.revoked_serials() == before, "a refused CRL changed the revocations")
        return
    # Accepted: signed by the seed CA, so its entries parse.
    serials = frozenset(entry.serial_number for entry in crl)
    check(VERIFIER.revoked_serials() == serials, "revocations differ from the CRL")
    VERIFIER.set_revocations(None)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    kind, armoured, body = data[0] & 3, data[0] & 4, data[1:]
    if armoured and LABELS[kind]:
        body = _pem(LABELS[kind], body)
    if kind == 0:
        _certificate(body)
    elif kind == 1:
        _crl(body)
    elif kind == 2:
        with contextlib.suppress(PkiError):
            load_ca_key(body, "fuzz input")
    else:
        with contextlib.suppress(PkiError):
            parse_index(body)


if __name__ == "__main__":
    main(test_one_input)
    sys.exit(0)

"""zgate PKI: a small CA for relay, client and connector certificates, CRLs and identities.

The library the ``zgate pki`` CLI, the control plane and the relay share. A PKI directory holds
``ca.pem``/``ca.key``, ``relay.pem``/``relay.key``, ``crl.pem``, ``index.json`` and the leaf
certificates in ``clients/`` and ``connectors/`` (see `PkiPaths`); `CertificateAuthority` is
the same CA held in memory, for a CA kept in a database.
"""

from ._authority import (
    IssuedCertificate,
    init_pki,
    issue_certificate,
    list_certificates,
    revoke_certificate,
)
from ._ca import BundleKind, CertificateAuthority, CertificateBundle
from ._checks import (
    IdentityFiles,
    PkiFileError,
    check_identity_files,
    load_certificate_file,
    load_private_key_file,
)
from ._errors import REFUSAL_REASONS, CertificateRefused, PkiError, RefusalReason
from ._identity import Identity, identity_from_certificate
from ._layout import PkiPaths
from ._names import (
    KINDS,
    Kind,
    validate_dns_name,
    validate_group,
    validate_ident,
    validate_ip,
    validate_trust_domain,
)
from ._verifier import ChainVerifier

__all__ = [
    "KINDS",
    "REFUSAL_REASONS",
    "BundleKind",
    "CertificateAuthority",
    "CertificateBundle",
    "CertificateRefused",
    "ChainVerifier",
    "Identity",
    "IdentityFiles",
    "IssuedCertificate",
    "Kind",
    "PkiError",
    "PkiFileError",
    "PkiPaths",
    "RefusalReason",
    "check_identity_files",
    "identity_from_certificate",
    "init_pki",
    "issue_certificate",
    "list_certificates",
    "load_certificate_file",
    "load_private_key_file",
    "revoke_certificate",
    "validate_dns_name",
    "validate_group",
    "validate_ident",
    "validate_ip",
    "validate_trust_domain",
]

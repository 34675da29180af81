"""Moved: the relay's client-certificate shim for aioquic now lives in the aioquic engine
adapter, :mod:`zgate_proto.engines._aioquic_mtls`, next to every other use of aioquic's
private attributes. This module only re-exports its names until the relay's last import of
it is gone.
"""

from __future__ import annotations

from zgate_proto.engines._aioquic_mtls import (
    HANDSHAKE_REFUSAL_REASONS,
    SUPPORTED_AIOQUIC_VERSION,
    AlertCertificateRequired,
    AlertCertificateRevoked,
    AlertUnknownCa,
    HandshakeRefusal,
    MtlsServerConnection,
    RefusalCallback,
    UnsupportedAioquicVersion,
    build_server_configuration,
    check_aioquic_version,
)

__all__ = [
    "HANDSHAKE_REFUSAL_REASONS",
    "SUPPORTED_AIOQUIC_VERSION",
    "AlertCertificateRequired",
    "AlertCertificateRevoked",
    "AlertUnknownCa",
    "HandshakeRefusal",
    "MtlsServerConnection",
    "RefusalCallback",
    "UnsupportedAioquicVersion",
    "build_server_configuration",
    "check_aioquic_version",
]

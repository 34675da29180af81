"""Client certificates (mTLS) for aioquic's server: the one place that touches its TLS internals.

aioquic 1.7.2 has no public server-side client-certificate API. Its TLS context has a private
``_request_client_certificate`` flag; with it set, the server sends a CertificateRequest, but
``_server_handle_certificate`` still accepts an EMPTY Certificate message (the handshake goes on
without client authentication) and only the CertificateVerify signature is ever checked, never
the chain. `MtlsServerConnection` closes both holes:

- after aioquic builds its TLS context (``QuicConnection._initialize``) it sets the flag and
  overrides the context's certificate handler on the instance, so that an empty Certificate
  ends the handshake with ``certificate_required`` (116) and a certificate that fails
  `ChainVerifier.verify` (CA, validity, CRL) ends it with bad_certificate (42),
  certificate_revoked (44), certificate_expired (45) or unknown_ca (48);
- it wraps the context's ``handle_message`` to record why any other handshake failed
  (``tls_version`` when the client offers no TLS 1.3, ``handshake_failed`` otherwise).

TLS 1.3 only: aioquic implements nothing else (QUIC requires 1.3, RFC 9001 section 4.2), and the
shim checks at every connection that the context still offers exactly TLS 1.3. Session
resumption is not offered: a resumed (PSK) handshake carries no client certificate.

Because all this depends on private attributes, importing this module fails unless aioquic is
exactly the version the shim was written and tested for (`SUPPORTED_AIOQUIC_VERSION`). It is
part of the aioquic engine adapter (:mod:`zgate_proto.engines._aioquic`), which builds its
server connections with it; nothing else should reach into aioquic's TLS context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Final

import aioquic
from aioquic import tls
from aioquic._buffer import Buffer  # aioquic.buffer re-exports it without __all__
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicConnectionError
from aioquic.quic.events import ConnectionTerminated, QuicEvent
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from zgate_pki import CertificateRefused, ChainVerifier, Identity, PkiError
from zgate_proto.engines._client_auth import (
    HANDSHAKE_REFUSAL_REASONS,
    HandshakeRefusal,
    RefusalRecord,
    utcnow,
    verify_client_chain,
)
from zgate_proto.engines.base import RefusalCallback, require_version

__all__ = [
    "HANDSHAKE_REFUSAL_REASONS",
    "SUPPORTED_AIOQUIC_VERSION",
    "HandshakeRefusal",
    "MtlsServerConnection",
    "RefusalCallback",
    "UnsupportedAioquicVersion",
    "build_server_configuration",
    "check_aioquic_version",
]


#: The aioquic release whose private TLS internals this module was written against.
SUPPORTED_AIOQUIC_VERSION: Final = "1.7.2"


class UnsupportedAioquicVersion(ImportError):
    """aioquic is not the exact version the mTLS shim supports."""


def check_aioquic_version(version: str) -> None:
    """Raise UnsupportedAioquicVersion unless `version` is `SUPPORTED_AIOQUIC_VERSION`."""
    try:
        require_version("aioquic", version, SUPPORTED_AIOQUIC_VERSION)
    except ImportError as exc:
        raise UnsupportedAioquicVersion(str(exc)) from None


check_aioquic_version(aioquic.__version__)


class MtlsServerConnection(QuicConnection):
    """A server QuicConnection that requires and verifies a client certificate.

    After the handshake ``peer_identity`` names the client. When the handshake is refused,
    ``refusal_reason`` (one of `HANDSHAKE_REFUSAL_REASONS`) and ``refusal_detail`` say why and
    `on_refused` is called once. `wall_clock` gives the time certificates are checked against
    (aioquic's ``now`` is a monotonic clock, not a date).
    """

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        verifier: ChainVerifier,
        original_destination_connection_id: bytes | None = None,
        retry_source_connection_id: bytes | None = None,
        on_refused: RefusalCallback | None = None,
        wall_clock: Callable[[], datetime] = utcnow,
        reset_token: Callable[[bytes], bytes] | None = None,
    ) -> None:
        if configuration.is_client:
            raise ValueError("MtlsServerConnection needs a server configuration")
        super().__init__(
            configuration=configuration,
            original_destination_connection_id=original_destination_connection_id,
            retry_source_connection_id=retry_source_connection_id,
        )
        self.peer_identity: Identity | None = None
        self._record = RefusalRecord(on_refused)
        self._verifier = verifier
        self._wall_clock = wall_clock
        self._verified_identity: Identity | None = None
        self._handshake_done = False
        self._reset_token = reset_token
        if reset_token is not None:
            self._derive_reset_tokens()

    @property
    def refusal_reason(self) -> HandshakeRefusal | None:
        """Why the handshake was refused (None while it was not)."""
        refusal = self._record.refusal
        return None if refusal is None else refusal[0]

    @property
    def refusal_detail(self) -> str | None:
        """What exactly was refused, for the relay's logs only."""
        refusal = self._record.refusal
        return None if refusal is None else refusal[1]

    # aioquic hooks

    def _derive_reset_tokens(self) -> None:
        """Give every host connection ID the relay's token for it (RFC 9000 §10.3): a relay
        that restarted, knowing the same key, can then reset the peers of connections it
        forgot. aioquic draws random tokens; they are replaced before they are ever sent
        (in the transport parameters, or in NEW_CONNECTION_ID frames)."""
        derive = self._reset_token
        assert derive is not None
        for host_cid in self._host_cids:  # the same token again for one already sent
            host_cid.stateless_reset_token = derive(host_cid.cid)

    def _replenish_connection_ids(self) -> None:
        super()._replenish_connection_ids()
        if self._reset_token is not None:
            self._derive_reset_tokens()

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        context = self.tls
        if context._supported_versions != [tls.TLS_VERSION_1_3]:
            raise RuntimeError("aioquic's TLS context must offer TLS 1.3 only")
        # Without resumption every handshake is a full one, which always asks for a certificate.
        context.get_session_ticket_cb = None
        context.new_session_ticket_cb = None
        context._request_client_certificate = True
        self._handle_certificate = context._server_handle_certificate
        self._handle_message = context.handle_message
        # Instance attributes shadow the methods; aioquic calls them through `self`.
        context._server_handle_certificate = self._verify_client  # type: ignore[method-assign]
        context.handle_message = self._handle_tls_message  # type: ignore[method-assign]

    def next_event(self) -> QuicEvent | None:
        """As QuicConnection.next_event; also records a handshake the client aborted."""
        event = super().next_event()
        if isinstance(event, ConnectionTerminated):
            self.note_termination(event.error_code)
        return event

    def note_termination(self, error_code: int) -> None:
        """The connection is closing with `error_code`: if that is a TLS alert before the
        handshake completed, record the refusal (the engine adapter calls this as soon as
        the close starts; aioquic's own event comes only after the closing period)."""
        if not self._handshake_done:
            self._record.closing(error_code)

    # TLS context overrides

    def _handle_tls_message(self, input_data: bytes, output_buf: dict[tls.Epoch, Buffer]) -> None:
        try:
            self._handle_message(input_data, output_buf)
        except (tls.Alert, QuicConnectionError) as exc:
            if not self._handshake_done:
                self._record.tls_failed(
                    exc, protocol_version=isinstance(exc, tls.AlertProtocolVersion)
                )
            raise
        if not self._handshake_done and self.tls.state is tls.State.SERVER_POST_HANDSHAKE:
            if self._verified_identity is None:
                # Unreachable while every handshake is a full one; refuse rather than trust.
                raise self._refusal("no_certificate", "handshake completed without a certificate")
            self._handshake_done = True
            self.peer_identity = self._verified_identity

    def _verify_client(self, input_buf: Buffer) -> None:
        self._handle_certificate(input_buf)
        leaf = self.tls._peer_certificate
        if leaf is None:
            raise self._refusal("no_certificate", "the client sent an empty Certificate message")
        try:
            identity = verify_client_chain(
                self._verifier, leaf, self.tls._peer_certificate_chain, self._wall_clock()
            )
        except CertificateRefused as exc:
            raise self._refusal(exc.reason, exc.detail) from None
        # Only exposed once the handshake completes, i.e. after CertificateVerify proved
        # that the client holds the certificate's key.
        self._verified_identity = identity

    def _refusal(self, reason: HandshakeRefusal, detail: str) -> tls.Alert:
        """Record the refusal; aioquic's exception for the alert that ends the handshake."""
        description, text = self._record.alert(reason, detail)
        alert = tls.Alert(text)
        alert.description = tls.AlertDescription(description)
        return alert


def build_server_configuration(
    cert_path: Path,
    key_path: Path,
    *,
    alpn: Sequence[str] = ("h3",),
    max_datagram_frame_size: int = 65536,
    max_datagram_size: int = SMALLEST_MAX_DATAGRAM_SIZE,
    idle_timeout: float = 60.0,
) -> QuicConfiguration:
    """A server QuicConfiguration with the relay's certificate chain and key loaded.

    `max_datagram_frame_size` enables QUIC DATAGRAM frames (needed for HTTP Datagrams);
    `max_datagram_size` is the largest UDP payload sent (aioquic's default: 1200).
    Raises PkiError if the files cannot be read or the key does not match the certificate.
    """
    configuration = QuicConfiguration(
        is_client=False,
        alpn_protocols=list(alpn),
        max_datagram_frame_size=max_datagram_frame_size,
        max_datagram_size=max_datagram_size,
        idle_timeout=idle_timeout,
    )
    try:
        configuration.load_cert_chain(cert_path, key_path)
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise PkiError(
            f"cannot load relay certificate {cert_path} / key {key_path}: {exc}"
        ) from None
    key: PrivateKeyTypes | None = configuration.private_key
    if (
        configuration.certificate is None
        or key is None
        or configuration.certificate.public_key() != key.public_key()
    ):
        raise PkiError(f"relay key {key_path} does not match certificate {cert_path}")
    return configuration

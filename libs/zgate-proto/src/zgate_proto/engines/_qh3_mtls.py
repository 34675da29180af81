"""Client certificates (mTLS) for qh3's server: the one place that touches qh3's TLS internals.

qh3 2.1.0's TLS server (``qh3.tls.Context``) has no client-authentication states: after the
ClientHello it sends its whole flight, pre-computes the client's Finished into the transcript
and then accepts nothing but that Finished. Five hooks, all owned here, add client
certificates without forking qh3 (see docs/design/quic-engines.md):

1. :class:`MtlsServerConnection` overrides the connection's TLS factory (``_create_tls``) to
   reach each TLS context before it sees the ClientHello;
2. it turns session tickets off (a resumed handshake carries no certificate, so every
   handshake must be a full one) and checks that the context offers TLS 1.3 only;
3. it sets the context's ALPS flag, so that the server does not pre-compute the client's
   Finished (the transcript will hold the client's Certificate and CertificateVerify first);
   no ALPS extension goes on the wire, since qh3 only echoes one when ``_alps_supported``
   (the server context's ``alps_negotiated`` then reads True: nothing in zgate looks at it);
4. one module-level wrapper of ``qh3.tls.push_encrypted_extensions`` writes a
   CertificateRequest right after the EncryptedExtensions, inside the same transcript update;
   it is inert unless armed, for one call, with the exact buffer of the handshake in progress;
5. :class:`ClientAuthenticator` wraps the context's ``handle_message``: it consumes the
   client's Certificate (empty: alert certificate_required; otherwise `ChainVerifier.verify`,
   with the same alerts as the aioquic shim: unknown_ca, certificate_expired,
   certificate_revoked, bad_certificate) and CertificateVerify (signature over the transcript
   with the leaf's key: decrypt_error when it fails), then hands the Finished to qh3. The
   identity is exposed only once Finished is accepted, i.e. after CertificateVerify proved that
   the client holds the certificate's key.

Refusal reasons, their alerts, the chain check and the ``on_refused`` callback are the aioquic
shim's, shared through :mod:`zgate_proto.engines._client_auth`: the first, most specific reason
wins, the callback runs once, ``tls_version`` when the client offers no TLS 1.3,
``handshake_failed`` for every other TLS failure (including a client's alert before the
handshake completed).

Importing this module fails unless qh3 is exactly `SUPPORTED_QH3_VERSION`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import qh3
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from qh3 import tls
from qh3._hazmat import (
    Buffer,
    BufferReadError,
    SignatureError,
    verify_with_public_key,
)
from qh3._hazmat import Certificate as Qh3Certificate
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection
from qh3.quic.tls_bridge import QuicTlsBridge, QuicTlsBridgeError

from zgate_pki import (
    CertificateRefused,
    ChainVerifier,
    Identity,
    PkiError,
    load_certificate_file,
    load_private_key_file,
)
from zgate_proto.engines._client_auth import (
    HANDSHAKE_REFUSAL_REASONS,
    HandshakeRefusal,
    RefusalRecord,
    utcnow,
    verify_client_chain,
)
from zgate_proto.engines.base import RefusalCallback, require_version

__all__ = [
    "CLIENT_SIGNATURE_ALGORITHMS",
    "HANDSHAKE_REFUSAL_REASONS",
    "SUPPORTED_QH3_VERSION",
    "ClientAuthenticator",
    "HandshakeRefusal",
    "MtlsServerConnection",
    "build_server_configuration",
]


#: The qh3 release whose private TLS internals this module was written against.
SUPPORTED_QH3_VERSION: Final = "2.1.0"

require_version("qh3", qh3.__version__, SUPPORTED_QH3_VERSION)

#: Signature schemes the CertificateRequest offers for the client's CertificateVerify
#: (RFC 8446 section 4.2.3); qh3's verifier handles each of them.
CLIENT_SIGNATURE_ALGORITHMS: Final[tuple[int, ...]] = (
    tls.SignatureAlgorithm.ECDSA_SECP256R1_SHA256,
    tls.SignatureAlgorithm.ECDSA_SECP384R1_SHA384,
    tls.SignatureAlgorithm.ECDSA_SECP521R1_SHA512,
    tls.SignatureAlgorithm.ED25519,
    tls.SignatureAlgorithm.RSA_PSS_RSAE_SHA256,
    tls.SignatureAlgorithm.RSA_PSS_RSAE_SHA384,
    tls.SignatureAlgorithm.RSA_PSS_RSAE_SHA512,
)

_CLIENT_VERIFY_CONTEXT: Final = b"TLS 1.3, client CertificateVerify"

_Message = TypeVar("_Message")


def _certificate_request() -> bytes:
    """A CertificateRequest (RFC 8446 section 4.3.2): empty context, signature_algorithms."""
    algorithms = b"".join(a.to_bytes(2, "big") for a in CLIENT_SIGNATURE_ALGORITHMS)
    extension_data = len(algorithms).to_bytes(2, "big") + algorithms
    extensions = (
        int(tls.ExtensionType.SIGNATURE_ALGORITHMS).to_bytes(2, "big")
        + len(extension_data).to_bytes(2, "big")
        + extension_data
    )
    body = b"\x00" + len(extensions).to_bytes(2, "big") + extensions
    return bytes([tls.HandshakeType.CERTIFICATE_REQUEST]) + len(body).to_bytes(3, "big") + body


_CERTIFICATE_REQUEST: Final = _certificate_request()


# ------------------------------------------------------------------ hook 4: the one patch


class _Armed(threading.local):
    """The handshake buffer that gets a CertificateRequest, for the duration of one call."""

    buffer: Any = None
    written: bool = False


_ARMED: Final = _Armed()


def _install_certificate_request_writer() -> None:
    """Wrap ``qh3.tls.push_encrypted_extensions`` once per process (idempotent).

    qh3's server writes EncryptedExtensions inside ``push_message``, which adds everything
    written in the block to the transcript; writing the CertificateRequest in the same block
    puts it where RFC 8446 wants it (after EncryptedExtensions, before Certificate) and into
    the transcript the server's CertificateVerify then signs.
    """
    original = tls.push_encrypted_extensions
    if getattr(original, "_zgate_writes_certificate_request", False):
        return

    def push_encrypted_extensions(buf: Buffer, extensions: tls.EncryptedExtensions) -> None:
        original(buf, extensions)
        if _ARMED.buffer is not None and buf is _ARMED.buffer:
            buf.push_bytes(_CERTIFICATE_REQUEST)
            _ARMED.written = True

    push_encrypted_extensions._zgate_writes_certificate_request = True  # type: ignore[attr-defined]
    tls.push_encrypted_extensions = push_encrypted_extensions


_install_certificate_request_writer()


# ----------------------------------------------------------------- hooks 2, 3 and 5


class ClientAuthenticator:
    """Requires and verifies the client certificate of one server handshake.

    :meth:`attach` arms a fresh qh3 TLS context. Afterwards ``identity`` names the client
    (once the handshake completed), ``chain`` holds its certificates as DER, and ``refusal``
    says why a refused handshake was refused.
    """

    def __init__(
        self,
        verifier: ChainVerifier,
        on_refused: RefusalCallback | None = None,
        wall_clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.identity: Identity | None = None
        self.chain: tuple[bytes, ...] = ()
        self.done = False
        self._record = RefusalRecord(on_refused)
        self._verifier = verifier
        self._wall_clock = wall_clock
        self._context: tls.Context | None = None
        self._handle_message: Callable[..., None] | None = None
        self._pending = b""
        self._expect = tls.HandshakeType.CERTIFICATE
        self._leaf_key: bytes | None = None
        self._verified: Identity | None = None

    @property
    def refusal(self) -> tuple[HandshakeRefusal, str] | None:
        """(reason, detail) of a refused handshake; None while it was not refused."""
        return self._record.refusal

    def attach(self, context: tls.Context) -> None:
        """Hooks 2, 3 and 5 on a server context that has not seen the ClientHello yet."""
        if context.state is not tls.State.SERVER_EXPECT_CLIENT_HELLO:
            raise RuntimeError("the client-certificate hooks need a fresh server TLS context")
        offered = [v for v in context._supported_versions if not _is_grease(v)]
        if offered != [tls.TLS_VERSION_1_3]:
            raise RuntimeError(f"qh3's TLS context must offer TLS 1.3 only, offers {offered}")
        context.get_session_ticket_cb = None
        context.new_session_ticket_cb = None
        context._alps_negotiated = True
        self._context = context
        self._handle_message = context.handle_message
        # An instance attribute shadows the method; qh3's bridge calls it through the context.
        context.handle_message = self._handle_tls_message  # type: ignore[method-assign]

    def note_termination(self, error_code: int) -> None:
        """The connection is closing with ``error_code``: a TLS alert before the handshake
        completed is a refusal (ours are recorded already; this catches the client's)."""
        if not self.done:
            self._record.closing(error_code)

    def refuse_malformed(self, detail: str) -> None:
        """qh3 raised on a handshake message it could not parse (not a TLS alert)."""
        if not self.done:
            self._record.refuse("handshake_failed", f"malformed handshake message: {detail}")

    # ---------------------------------------------------------------- TLS messages

    def _handle_tls_message(
        self, input_data: bytes, output_buf: dict[tls.Epoch, Buffer], epoch: int = -1
    ) -> None:
        context = self._context
        assert context is not None and self._handle_message is not None
        try:
            if context.state is tls.State.SERVER_EXPECT_CLIENT_HELLO:
                self._server_hello(input_data, output_buf, epoch)
            elif context.state is tls.State.SERVER_EXPECT_FINISHED:
                self._client_flight(input_data, output_buf, epoch)
            else:
                self._handle_message(input_data, output_buf, epoch=epoch)
        except (tls.Alert, QuicTlsBridgeError) as exc:
            if not self.done:
                self._record.tls_failed(
                    exc, protocol_version=isinstance(exc, tls.AlertProtocolVersion)
                )
            raise
        if not self.done and context.state is tls.State.SERVER_POST_HANDSHAKE:
            if self._verified is None:
                # Unreachable: Finished is only handed over after a verified certificate.
                raise self._refusal("no_certificate", "handshake completed without a certificate")
            self.done = True
            self.identity = self._verified

    def _server_hello(
        self, input_data: bytes, output_buf: dict[tls.Epoch, Buffer], epoch: int
    ) -> None:
        """qh3 answers the ClientHello; the armed patch adds our CertificateRequest."""
        assert self._context is not None and self._handle_message is not None
        _ARMED.buffer = output_buf[tls.Epoch.HANDSHAKE]
        _ARMED.written = False
        try:
            self._handle_message(input_data, output_buf, epoch=epoch)
            written = _ARMED.written
        finally:
            _ARMED.buffer = None
            _ARMED.written = False
        if self._context.state is tls.State.SERVER_EXPECT_FINISHED and not written:
            # Fail closed should a qh3 change route around the patch.
            raise tls.AlertInternalError("could not request a client certificate")

    def _client_flight(
        self, input_data: bytes, output_buf: dict[tls.Epoch, Buffer], epoch: int
    ) -> None:
        """Certificate and CertificateVerify are ours; Finished goes on to qh3."""
        assert self._handle_message is not None
        data = self._pending + input_data
        while len(data) >= 4:
            end = 4 + int.from_bytes(data[1:4], "big")
            if len(data) < end:
                break
            message, data = data[:end], data[end:]
            if epoch >= 0 and epoch != tls.Epoch.HANDSHAKE:
                raise tls.AlertUnexpectedMessage("client flight outside the Handshake epoch")
            kind = message[0]
            if self._expect is tls.HandshakeType.FINISHED:
                if kind != tls.HandshakeType.FINISHED:
                    raise tls.AlertUnexpectedMessage("expected the client's Finished")
                self._pending = b""
                self._handle_message(message + data, output_buf, epoch=epoch)
                return
            if kind == tls.HandshakeType.FINISHED and self._expect is tls.HandshakeType.CERTIFICATE:
                raise self._refusal("no_certificate", "the client sent no Certificate message")
            if kind != self._expect:
                raise tls.AlertUnexpectedMessage(f"expected handshake message {self._expect}")
            if kind == tls.HandshakeType.CERTIFICATE:
                self._certificate(message)
                self._expect = tls.HandshakeType.CERTIFICATE_VERIFY
            else:
                self._certificate_verify(message)
                self._expect = tls.HandshakeType.FINISHED
            self._transcript(message)
        self._pending = data

    def _transcript(self, message: bytes) -> None:
        context = self._context
        assert context is not None and context.key_schedule is not None
        context.key_schedule.update_hash(message)

    def _certificate(self, message: bytes) -> None:
        certificate = _pull_whole(message, tls.pull_certificate, "Certificate")
        if certificate.request_context != b"":
            raise tls.AlertIllegalParameter("unexpected certificate_request_context")
        if not certificate.certificates:
            raise self._refusal("no_certificate", "the client sent an empty Certificate message")
        ders = tuple(bytes(entry[0]) for entry in certificate.certificates)
        try:
            chain = [x509.load_der_x509_certificate(der) for der in ders]
            leaf_key = Qh3Certificate(ders[0]).public_key()
        except Exception as exc:
            raise self._refusal("bad_certificate", f"unparsable certificate: {exc}") from None
        try:
            identity = verify_client_chain(self._verifier, chain[0], chain[1:], self._wall_clock())
        except CertificateRefused as exc:
            raise self._refusal(exc.reason, exc.detail) from None
        self.chain = ders
        self._leaf_key = leaf_key
        self._verified = identity

    def _certificate_verify(self, message: bytes) -> None:
        context = self._context
        assert context is not None and context.key_schedule is not None
        verify = _pull_whole(message, tls.pull_certificate_verify, "CertificateVerify")
        if verify.algorithm not in CLIENT_SIGNATURE_ALGORITHMS:
            raise tls.AlertIllegalParameter("CertificateVerify with a scheme we did not offer")
        assert self._leaf_key is not None
        signed = context.key_schedule.certificate_verify_data(_CLIENT_VERIFY_CONTEXT)
        try:
            verify_with_public_key(self._leaf_key, verify.algorithm, signed, verify.signature)
        except (SignatureError, ValueError) as exc:
            raise tls.AlertDecryptError(
                f"CertificateVerify does not match the certificate's key ({exc})"
            ) from None

    # -------------------------------------------------------------------- refusals

    def _refusal(self, reason: HandshakeRefusal, detail: str) -> tls.Alert:
        """Record the refusal; qh3's exception for the alert that ends the handshake."""
        description, text = self._record.alert(reason, detail)
        alert = tls.Alert(text)
        alert.description = tls.AlertDescription(description)
        return alert


def _pull_whole(message: bytes, pull: Callable[[Buffer], _Message], name: str) -> _Message:
    """One handshake message parsed with qh3's ``pull``; alert decode_error when it is
    malformed or does not fill ``message`` exactly."""
    try:
        buf = Buffer(data=message)
        parsed = pull(buf)
        complete = buf.eof()
    except (BufferReadError, ValueError):
        raise tls.AlertDecodeError(f"malformed {name} message") from None
    if not complete:
        raise tls.AlertDecodeError(f"extra bytes at the end of the {name} message")
    return parsed


def _is_grease(value: int) -> bool:
    """GREASE code points (RFC 8701) are 0x?a?a with both bytes equal."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


# -------------------------------------------------------------------- hook 1


class MtlsServerConnection(QuicConnection):
    """A qh3 server connection whose TLS context requires a client certificate."""

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        original_destination_connection_id: bytes,
        authenticator: ClientAuthenticator,
        retry_source_connection_id: bytes | None = None,
        reset_token: Callable[[bytes], bytes] | None = None,
    ) -> None:
        if configuration.is_client:
            raise ValueError("MtlsServerConnection needs a server configuration")
        super().__init__(
            configuration=configuration,
            original_destination_connection_id=original_destination_connection_id,
            retry_source_connection_id=retry_source_connection_id,
        )
        self.authenticator = authenticator
        self._reset_token = reset_token

    def _create_tls(self, remote_source_cid: bytes | None) -> QuicTlsBridge:
        bridge = super()._create_tls(remote_source_cid)
        self.authenticator.attach(bridge.tls)
        if self._reset_token is not None:
            # The first connection ID's token travels in the transport parameters, which
            # the bridge serialized when it was made: set it and serialize them again. (The
            # core draws the other IDs' tokens itself, see the adapter.)
            bridge.stateless_reset_token = self._reset_token(self.host_cid)
            bridge.tls.handshake_extensions = [
                (
                    tls.ExtensionType.QUIC_TRANSPORT_PARAMETERS,
                    bridge.serialize_transport_parameters(),
                )
            ]
        return bridge


def build_server_configuration(
    cert_path: Path,
    key_path: Path,
    *,
    alpn: tuple[str, ...] = ("h3",),
    max_datagram_frame_size: int = 65536,
    max_datagram_size: int = 1200,
    idle_timeout: float = 60.0,
    connection_id_length: int = 8,
) -> QuicConfiguration:
    """A server QuicConfiguration with the relay's certificate chain and key loaded.

    Raises PkiError if the files cannot be read or the key does not match the certificate
    (checked with cryptography: qh3 would only fail at the first handshake).
    """
    certificate = load_certificate_file(cert_path, "relay certificate")
    key = load_private_key_file(key_path, "relay key")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ) != key.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise PkiError(f"relay key {key_path} does not match certificate {cert_path}")
    configuration = QuicConfiguration(
        is_client=False,
        alpn_protocols=list(alpn),
        max_datagram_frame_size=max_datagram_frame_size or None,
        max_datagram_size=max_datagram_size,
        idle_timeout=idle_timeout,
        connection_id_length=connection_id_length,
    )
    try:
        configuration.load_cert_chain(cert_path, key_path)
    except Exception as exc:
        raise PkiError(
            f"cannot load relay certificate {cert_path} / key {key_path}: {exc}"
        ) from None
    return configuration

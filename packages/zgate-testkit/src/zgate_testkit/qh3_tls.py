"""qh3's TLS layer driven by hand, without QUIC around it: the tests of the client-certificate
shim (zgate_proto.engines._qh3_mtls) feed one side's handshake messages to the other, one at a
time, to check what the server knows at each step."""

from __future__ import annotations

from qh3 import tls
from qh3._hazmat import Buffer
from qh3.quic.configuration import QuicConfiguration

from zgate_pki import PkiPaths
from zgate_proto.engines import _qh3_mtls

__all__ = ["tls_contexts", "tls_flight", "tls_messages"]


def tls_flight(context: tls.Context, data: bytes, epoch: tls.Epoch) -> dict[tls.Epoch, bytes]:
    """What ``context`` answers to ``data`` received at ``epoch``, by epoch."""
    buffers = {
        e: Buffer(capacity=16384)
        for e in (tls.Epoch.INITIAL, tls.Epoch.HANDSHAKE, tls.Epoch.ONE_RTT)
    }
    context.handle_message(data, buffers, epoch=epoch)
    return {e: b.data for e, b in buffers.items()}


def tls_messages(data: bytes) -> list[bytes]:
    """``data`` split into its TLS handshake messages (1-byte type, 3-byte length, body)."""
    out = []
    while data:
        end = 4 + int.from_bytes(data[1:4], "big")
        out.append(data[:end])
        data = data[end:]
    return out


def tls_contexts(pki: PkiPaths) -> tuple[tls.Context, tls.Context]:
    """Bare qh3 TLS contexts, no QUIC around them: alice's client and the relay's server."""
    client = tls.Context(
        is_client=True, alpn_protocols=["h3"], server_name="localhost", cafile=str(pki.ca_cert)
    )
    client_configuration = QuicConfiguration(is_client=True)
    client_configuration.load_cert_chain(
        pki.leaf_cert("client", "alice"), pki.leaf_key("client", "alice")
    )
    client.certificate = client_configuration.certificate
    client.certificate_private_key = client_configuration.private_key
    server_configuration = _qh3_mtls.build_server_configuration(pki.relay_cert, pki.relay_key)
    server = tls.Context(is_client=False, alpn_protocols=["h3"])
    server.certificate = server_configuration.certificate
    server.certificate_private_key = server_configuration.private_key
    return client, server

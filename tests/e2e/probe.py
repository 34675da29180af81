"""A misbehaving client for the e2e tests, run inside an agent namespace.

    python probe.py handshake --relay HOST:PORT --ca CA [--cert C --key K] [--tls12]
    python probe.py malformed --relay HOST:PORT --ca CA --cert C --key K --what WHAT

`handshake` tries a QUIC/TLS handshake and prints {"connected": bool, "error_code": int,
"reason": str}. `malformed` opens a CONNECT-IP session (stream mode), then sends WHAT
(garbage-datagrams: GARBAGE datagrams with an unknown context ID and as many for an unknown
stream | truncated-capsule | oversized-capsule) and prints whether the session survived and
how it ended.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
from typing import Any

from aioquic import tls
from aioquic.asyncio.client import connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from zgate_agent.tunnel import TunnelError, TunnelProtocol
from zgate_proto.capsules import CapsuleType
from zgate_proto.h3 import PacketMode
from zgate_proto.varint import encode_varint

GARBAGE = 50
"""How many datagrams of each kind `malformed --what garbage-datagrams` sends."""
UNKNOWN_CONTEXT = 7
"""A context ID the session never registered (RFC 9484 uses only 0 for IP packets)."""


def configuration(args: argparse.Namespace) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=["h3"],
        max_datagram_frame_size=65536,
        server_name="relay",
        verify_mode=ssl.CERT_REQUIRED,
    )
    config.load_verify_locations(cafile=args.ca)
    if args.cert:
        config.load_cert_chain(args.cert, args.key)
    return config


def tls12_only(connection: QuicConnection) -> None:
    """Make the client offer TLS 1.2 only (aioquic itself only speaks 1.3)."""
    original = connection._initialize

    def initialize(peer_cid: bytes) -> None:
        original(peer_cid)
        connection.tls._supported_versions = [tls.TLS_VERSION_1_2]

    connection._initialize = initialize  # type: ignore[method-assign]


async def handshake(args: argparse.Namespace) -> dict[str, Any]:
    host, port = args.relay.rsplit(":", 1)
    created: list[TunnelProtocol] = []

    def make(connection: QuicConnection, *a: Any, **kw: Any) -> TunnelProtocol:
        if args.tls12:
            tls12_only(connection)
        protocol = TunnelProtocol(connection, *a, **kw)
        created.append(protocol)
        return protocol

    try:
        async with connect(
            host, int(port), configuration=configuration(args), create_protocol=make
        ) as protocol:
            assert isinstance(protocol, TunnelProtocol)
            info = await protocol.open_session(
                f"relay:{port}", PacketMode.STREAM, fallback=True, max_queued=64, timeout=5
            )
            return {"connected": True, "addresses": [str(a) for a in info.addresses]}
    except (ConnectionError, TunnelError, OSError) as exc:
        end = created[0]._quic._close_event if created else None
        return {
            "connected": False,
            "error_code": getattr(end, "error_code", None),
            "reason": getattr(end, "reason_phrase", str(exc)),
        }


async def malformed(args: argparse.Namespace) -> dict[str, Any]:
    host, port = args.relay.rsplit(":", 1)
    async with connect(
        host, int(port), configuration=configuration(args), create_protocol=TunnelProtocol
    ) as protocol:
        assert isinstance(protocol, TunnelProtocol)
        await protocol.open_session(
            f"relay:{port}", PacketMode.STREAM, fallback=True, max_queued=64, timeout=5
        )
        stream = protocol.stream
        assert stream is not None
        sid = stream.stream_id
        if args.what == "garbage-datagrams":
            # GARBAGE datagrams of each kind: the session's stream with a context ID other
            # than 0 (unknown_context), and a stream that is no session (unknown_stream).
            for _ in range(GARBAGE):
                payload = os.urandom(64)
                protocol._quic.send_datagram_frame(
                    encode_varint(sid // 4) + encode_varint(UNKNOWN_CONTEXT) + payload
                )
                protocol._quic.send_datagram_frame(
                    encode_varint(sid // 4 + 1000) + encode_varint(0) + payload
                )
        elif args.what == "truncated-capsule":
            capsule = encode_varint(CapsuleType.DATAGRAM) + encode_varint(1000) + b"\x00" * 10
            protocol.h3.send_data(sid, capsule, end_stream=True)
        elif args.what == "oversized-capsule":
            capsule = encode_varint(CapsuleType.DATAGRAM) + encode_varint(1 << 40) + b"\x00"
            protocol.h3.send_data(sid, capsule, end_stream=False)
        protocol.transmit()
        try:
            await asyncio.wait_for(protocol.terminated.wait(), timeout=3)
        except TimeoutError:
            return {"session_alive": True}
        return {"session_alive": False, "reason": protocol.close_reason}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["handshake", "malformed"])
    parser.add_argument("--relay", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--tls12", action="store_true")
    parser.add_argument("--what", default="garbage-datagrams")
    args = parser.parse_args()
    run = handshake if args.action == "handshake" else malformed
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()

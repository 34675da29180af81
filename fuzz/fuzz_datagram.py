"""Fuzz HTTP datagram parsing (RFC 9297 §2, RFC 9484 §6): zgate_proto.datagram and the
session layer's DATAGRAM frame split (zgate_proto.session._wire).

Contract: ``decode_http_datagram``/``decode_ip_datagram`` return or raise DecodeError;
``split_datagram`` and ``capsule_packet`` never raise (they report a DropReason).
Properties: the context ID and payload re-encode to a datagram that decodes the same;
the payload is a suffix of the input; ``decode_ip_datagram`` gives the payload exactly
when the context ID is 0; ``split_datagram`` agrees with the varint and datagram decoders.
"""

from __future__ import annotations

import sys

from harness import check, instrumented, main

with instrumented(__name__ == "__main__"):
    from zgate_proto.capsules import DatagramCapsule
    from zgate_proto.datagram import (
        CONTEXT_ID_IP,
        decode_http_datagram,
        decode_ip_datagram,
        encode_http_datagram,
    )
    from zgate_proto.errors import DecodeError
    from zgate_proto.session._events import DropReason, PacketDropped, PacketReceived
    from zgate_proto.session._wire import capsule_packet, split_datagram
    from zgate_proto.varint import decode_varint, encode_varint

TARGETS = ("zgate_proto.datagram", "zgate_proto.varint", "zgate_proto.session._wire")


def _http_datagram(data: bytes) -> None:
    try:
        context_id, payload = decode_http_datagram(data)
    except DecodeError:
        try:
            ip_packet = decode_ip_datagram(data)
        except DecodeError:
            return
        raise AssertionError(f"decode_ip_datagram accepted {ip_packet!r}") from None
    check(data.endswith(payload) and len(payload) < len(data), "payload not a suffix")
    again = decode_http_datagram(encode_http_datagram(context_id, payload))
    check(again == (context_id, payload), "context ID and payload do not round-trip")
    ip_packet = decode_ip_datagram(data)
    check(
        ip_packet == (payload if context_id == CONTEXT_ID_IP else None),
        "decode_ip_datagram disagrees with decode_http_datagram",
    )


def _quic_datagram(data: bytes) -> None:
    stream_id, packet = split_datagram(data)
    try:
        quarter, pos = decode_varint(data)
    except DecodeError:
        check((stream_id, packet) == (-1, DropReason.MALFORMED_DATAGRAM), "bad varint kept")
        return
    check(stream_id == quarter << 2, "stream ID is not four times the quarter stream ID")
    if isinstance(packet, bytes):
        check(packet == decode_ip_datagram(data[pos:]), "packet differs from the payload")
        check(
            split_datagram(encode_varint(quarter) + b"\x00" + packet) == (stream_id, packet),
            "a datagram does not round-trip",
        )


def _capsule(data: bytes) -> None:
    event = capsule_packet(4, DatagramCapsule(data))
    check(isinstance(event, PacketReceived | PacketDropped), "capsule_packet gave no event")


def test_one_input(data: bytes) -> None:
    _http_datagram(data)
    _quic_datagram(data)
    _capsule(data)


if __name__ == "__main__":
    main(test_one_input)
    sys.exit(0)

"""Fuzz the QUIC invariant header parser the relay runs on every datagram before anything
else: zgate_proto.quic_header (RFC 8999 §5, RFC 9000 §17).

Contract: ``destination_cid``/``parse_header`` return or raise DecodeError;
``starts_connection``/``wants_version_negotiation`` never raise. Properties: the parsed
destination CID is the one ``destination_cid`` reads and lies inside the datagram; a
version 1 long header's CIDs are at most 20 bytes; a Version Negotiation answer echoes the
CIDs swapped and is never wanted for a datagram under 1200 bytes or for a Version
Negotiation packet. The first input byte picks the short-header CID length (0-20).
"""

from __future__ import annotations

import sys

from harness import check, instrumented, main

with instrumented(__name__ == "__main__"):
    from zgate_proto.errors import DecodeError
    from zgate_proto.quic_header import (
        MAX_CID_LENGTH,
        MIN_INITIAL_SIZE,
        QUIC_V1,
        destination_cid,
        parse_header,
        starts_connection,
        version_negotiation,
        wants_version_negotiation,
    )

TARGETS = ("zgate_proto.quic_header",)
SUPPORTED = (QUIC_V1,)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    cid_length, datagram = data[0] % (MAX_CID_LENGTH + 1), data[1:]
    # Sizes at and around the 1200-byte threshold without 1200-byte inputs.
    size = len(datagram) + (MIN_INITIAL_SIZE - 2 + data[0] % 4 if data[0] & 0x80 else 0)
    try:
        header = parse_header(datagram, cid_length)
    except DecodeError:
        return
    check(header.destination_cid == destination_cid(datagram, cid_length), "two DCIDs")
    check(len(header.destination_cid) + len(header.source_cid) < len(datagram), "CIDs overrun")
    if header.version == QUIC_V1:
        check(len(header.destination_cid) <= MAX_CID_LENGTH, "v1 DCID over 20 bytes")
        check(len(header.source_cid) <= MAX_CID_LENGTH, "v1 SCID over 20 bytes")
    starts = starts_connection(header, size)
    check(not starts or (size >= MIN_INITIAL_SIZE and header.version == QUIC_V1), "bad start")
    if wants_version_negotiation(header, size, SUPPORTED):
        check(size >= MIN_INITIAL_SIZE and header.version not in (0, QUIC_V1), "VN wanted")
        answer = version_negotiation(
            destination_cid=header.source_cid,
            source_cid=header.destination_cid,
            versions=SUPPORTED,
        )
        echoed = parse_header(answer, cid_length)
        check(echoed.version == 0, "VN packet without version 0")
        check(echoed.destination_cid == header.source_cid, "VN does not echo the SCID")
        check(echoed.source_cid == header.destination_cid, "VN does not echo the DCID")
        check(not wants_version_negotiation(echoed, 4096, SUPPORTED), "VN answered with VN")


if __name__ == "__main__":
    main(test_one_input)
    sys.exit(0)

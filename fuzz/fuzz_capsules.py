"""Fuzz the capsule stream decoder (RFC 9297 §3.2, RFC 9484 §4.7): zgate_proto.capsules.

Contract: ``CapsuleDecoder.feed``/``eof`` return capsules or raise DecodeError (its
subclass CapsuleTooLarge included), nothing else. Properties:

* the stream split at arbitrary points decodes to the same capsules, and fails or not
  alike, as the stream fed whole (the decoder is incremental);
* every decoded capsule re-encodes, and its encoding decodes to an equal capsule;
* ``buffered`` never exceeds the bytes fed.

The first input byte chooses the split points; the rest is the stream.
"""

from __future__ import annotations

import sys

from harness import check, instrumented, main

with instrumented(__name__ == "__main__"):
    from zgate_proto.capsules import Capsule, CapsuleDecoder, DatagramCapsule, encode_capsule
    from zgate_proto.errors import DecodeError

TARGETS = ("zgate_proto.capsules", "zgate_proto.varint")
MAX_CAPSULE = 2048  # small, so the too-large path is reachable by short inputs


def _decode(chunks: list[bytes]) -> tuple[list[Capsule], bool, bool]:
    """(capsules, failed, at a boundary at the end) of a stream fed as ``chunks``."""
    decoder = CapsuleDecoder(MAX_CAPSULE)
    capsules: list[Capsule] = []
    fed = 0
    try:
        for chunk in chunks:
            fed += len(chunk)
            capsules += decoder.feed(chunk)
            check(decoder.buffered <= fed, "the decoder holds more than it was fed")
    except DecodeError:
        return capsules, True, False
    boundary = decoder.at_boundary
    try:
        decoder.eof()
    except DecodeError:
        check(not boundary, "eof() failed at a capsule boundary")
        return capsules, False, False
    check(boundary, "eof() accepted a stream cut inside a capsule")
    return capsules, False, True


def test_one_input(data: bytes) -> None:
    if not data:
        return
    step, stream = data[0] % 17 + 1, data[1:]
    whole, whole_failed, whole_boundary = _decode([stream])
    pieces = [stream[i : i + step] for i in range(0, len(stream), step)]
    split, split_failed, split_boundary = _decode(pieces)
    check(whole_failed == split_failed, "split and whole streams disagree on failing")
    if not whole_failed:
        check(whole == split, "split and whole streams decode differently")
        check(whole_boundary == split_boundary, "split and whole streams end differently")
    for capsule in whole:
        encoded = encode_capsule(capsule)
        again = CapsuleDecoder(max(MAX_CAPSULE, len(encoded))).feed(encoded)
        check(again == [capsule], f"{capsule!r} does not survive a round trip")
        if isinstance(capsule, DatagramCapsule):
            check(len(capsule.payload) <= len(stream), "a payload longer than the stream")


if __name__ == "__main__":
    main(test_one_input)
    sys.exit(0)

"""Fuzz the Extended CONNECT request and the HTTP/3 layer under it: zgate_proto.request
(RFC 9484 §3-4, RFC 9220, RFC 9297 §3.4) and zgate_proto.http3's frame reader, SETTINGS
parser and QPACK decoding (pylsqpack, with the table capacity 0 the endpoint advertises).

The first input byte picks one of three inputs:

0. a header list (``name=value`` lines; names starting with ":" are pseudo-headers) for
   ``parse_connect_ip_request`` and ``validate_connect_ip_response``: they return or raise
   RequestError, whose status is one the module documents;
1. an HTTP/3 request or control stream for ``FrameReader`` (whole and split in pieces must
   give the same frames), then SETTINGS, single-varint frames and HEADERS (QPACK-decoded,
   then validated as a request). Allowed errors: ProtocolViolation, pylsqpack's
   DecompressionFailed/StreamBlocked (which the endpoint turns into a connection error),
   RequestError;
2. an operator's URI template, a target and an ipproto: ``expand_template`` and
   ``build_connect_ip_request`` return or raise ProtoError, and a request built from a
   template parses back to the same scope.
"""

from __future__ import annotations

import sys

from harness import check, instrumented, main

with instrumented(__name__ == "__main__"):
    import pylsqpack

    from zgate_proto.errors import ProtoError, RequestError
    from zgate_proto.http3._frames import (
        FrameReader,
        FrameType,
        ProtocolViolation,
        encode_frame,
        parse_settings,
        single_varint,
    )
    from zgate_proto.request import (
        DEFAULT_TEMPLATE,
        ConnectIpTarget,
        build_connect_ip_request,
        parse_connect_ip_request,
        validate_connect_ip_response,
    )

TARGETS = ("zgate_proto.request", "zgate_proto.http3._frames")
REQUEST_STATUSES = frozenset((400, 404, 405, 501))


def _headers(text: bytes) -> list[tuple[bytes, bytes]]:
    headers = []
    for line in text.split(b"\n"):
        name, _, value = line.partition(b"=")
        headers.append((name, value))
    return headers


def _request(headers: list[tuple[bytes, bytes]], template: str = DEFAULT_TEMPLATE) -> None:
    try:
        target = parse_connect_ip_request(headers, template)
    except RequestError as exc:
        check(exc.status in REQUEST_STATUSES, f"unexpected status {exc.status}")
        return
    check(isinstance(target, ConnectIpTarget), "no target")
    check(target.network is None or target.hostname is None, "both a network and a name")


def _response(headers: list[tuple[bytes, bytes]]) -> None:
    try:
        validate_connect_ip_response(headers)
    except RequestError as exc:
        check(exc.status == 0 or 100 <= exc.status <= 599, f"bad status {exc.status}")


def _frames(stream: bytes, step: int) -> None:
    try:
        frames = FrameReader().feed(stream)
    except ProtocolViolation:
        return
    reader = FrameReader()
    pieces: list[tuple[int, bytes]] = []
    for i in range(0, len(stream), step):
        pieces += reader.feed(stream[i : i + step])
    merged: list[tuple[int, bytes]] = []
    for kind, payload in pieces:  # DATA comes in pieces as it arrives: join them
        if merged and kind == 0 and merged[-1][0] == 0:
            merged[-1] = (0, merged[-1][1] + payload)
        else:
            merged.append((kind, payload))
    whole = [f for f in frames if f != (0, b"")]
    check([f for f in merged if f != (0, b"")] == _join_data(whole), "split stream differs")
    decoder = pylsqpack.Decoder(0, 0)
    for kind, payload in frames:
        if kind != 0:  # a whole frame: its minimal encoding fits in the stream it came in
            check(len(encode_frame(kind, payload)) <= len(stream), "frame longer than stream")
        try:
            if kind == FrameType.SETTINGS:
                settings = parse_settings(payload)
                check(all(v >= 0 for v in settings.values()), "negative setting")
            elif kind in (FrameType.GOAWAY, FrameType.MAX_PUSH_ID, FrameType.CANCEL_PUSH):
                check(single_varint(payload, "frame") >= 0, "negative varint")
            elif kind == FrameType.HEADERS:
                _, headers = decoder.feed_header(0, payload)
                _request(headers)
                _response(headers)
        except (ProtocolViolation, pylsqpack.DecompressionFailed, pylsqpack.StreamBlocked):
            return


def _join_data(frames: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    joined: list[tuple[int, bytes]] = []
    for kind, payload in frames:
        if joined and kind == 0 and joined[-1][0] == 0:
            joined[-1] = (0, joined[-1][1] + payload)
        else:
            joined.append((kind, payload))
    return joined


def _template(data: bytes) -> None:
    template_bytes, _, rest = data.partition(b"\n")
    target_bytes, _, proto = rest.partition(b"\n")
    template = template_bytes.decode("latin-1")
    target = target_bytes.decode("latin-1") or "*"
    ipproto = proto[0] if proto else None
    try:
        headers = build_connect_ip_request("relay.example", target, ipproto, template)
    except ProtoError:
        return
    scope = parse_connect_ip_request(headers, template)
    check(scope == ConnectIpTarget(target, ipproto), f"{template!r} does not round-trip")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    if mode == 0:
        headers = _headers(body)
        _request(headers)
        _response(headers)
    elif mode == 1:
        _frames(body, data[0] // 3 % 13 + 1)
    else:
        _template(body)


if __name__ == "__main__":
    main(test_one_input)
    sys.exit(0)

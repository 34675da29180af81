"""The exception hierarchy: one base, codes and metric-safe reasons."""

from __future__ import annotations

import pytest

from zgate_proto.errors import (
    CapsuleTooLarge,
    DecodeError,
    H3ErrorCode,
    PacketError,
    ProtoError,
    RequestError,
)


def test_hierarchy() -> None:
    assert issubclass(DecodeError, ProtoError)
    assert issubclass(CapsuleTooLarge, DecodeError)
    assert issubclass(PacketError, DecodeError)
    assert issubclass(RequestError, ProtoError)
    assert not issubclass(ProtoError, ValueError)


def test_wire_codes() -> None:
    assert int(H3ErrorCode.H3_DATAGRAM_ERROR) == 0x33
    assert int(H3ErrorCode.H3_GENERAL_PROTOCOL_ERROR) == 0x101
    assert int(H3ErrorCode.H3_MESSAGE_ERROR) == 0x10E


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (ProtoError("x"), None, "protocol_error"),
        (DecodeError("x"), H3ErrorCode.H3_MESSAGE_ERROR, "malformed"),
        (CapsuleTooLarge("x"), H3ErrorCode.H3_MESSAGE_ERROR, "capsule_too_large"),
        (PacketError("x"), None, "bad_packet"),
        (RequestError("x", status=404), None, "bad_request"),
    ],
)
def test_defaults(error: ProtoError, code: int | None, reason: str) -> None:
    assert error.code == code
    assert error.reason == reason
    assert str(error) == "x"


def test_explicit_code_and_reason_win() -> None:
    error = DecodeError("bad", code=H3ErrorCode.H3_DATAGRAM_ERROR, reason="bad_context_id")
    assert error.code == 0x33
    assert error.reason == "bad_context_id"


def test_request_error_status() -> None:
    error = RequestError("nope", status=501, code=H3ErrorCode.H3_MESSAGE_ERROR)
    assert error.status == 501
    assert error.code == 0x10E

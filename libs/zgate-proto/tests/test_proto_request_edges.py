"""CONNECT-IP request and response rules at their edges, written to kill the mutants
`make mutants` found alive: status boundaries, host name limits, and the reason and
status each refusal carries (the server answers with that status; metrics count reasons)."""

from __future__ import annotations

import pytest

from zgate_proto.errors import H3ErrorCode, ProtoError, RequestError
from zgate_proto.request import (
    ConnectIpTarget,
    parse_connect_ip_request,
    response_headers,
    validate_connect_ip_response,
)


def request(**pseudo: str) -> list[tuple[bytes, bytes]]:
    values = {
        "method": "CONNECT",
        "protocol": "connect-ip",
        "scheme": "https",
        "authority": "relay.example:4433",
        "path": "/.well-known/masque/ip/*/*/",
    }
    values.update(pseudo)
    headers = [(f":{k}".encode(), v.encode()) for k, v in values.items() if v != "-"]
    return [*headers, (b"capsule-protocol", b"?1")]


@pytest.mark.parametrize("status", [200, 201, 299])
def test_2xx_answers_start_the_capsule_protocol(status: int) -> None:
    validate_connect_ip_response([(b":status", str(status).encode())])
    assert (b"capsule-protocol", b"?1") in response_headers(status)


@pytest.mark.parametrize("status", [199, 300, 404, 503])
def test_other_answers_are_refusals_with_their_status(status: int) -> None:
    with pytest.raises(RequestError) as caught:
        validate_connect_ip_response([(b":status", str(status).encode())])
    assert (caught.value.status, caught.value.reason) == (status, "refused")
    assert caught.value.code is None
    assert f"proxy answered {status}" in str(caught.value)


@pytest.mark.parametrize("status", [204, 205, 206])
def test_2xx_without_content_cannot_start_the_capsule_protocol(status: int) -> None:
    with pytest.raises(RequestError) as caught:
        validate_connect_ip_response([(b":status", str(status).encode())])
    error = caught.value
    assert (error.status, error.reason, error.code) == (
        status,
        "malformed_response",
        H3ErrorCode.H3_MESSAGE_ERROR,
    )


def test_content_headers_and_bad_statuses_are_malformed_responses() -> None:
    for headers in (
        [(b":status", b"200"), (b"content-length", b"0")],
        [(b":status", b"2000")],
        [],
    ):
        with pytest.raises(RequestError) as caught:
            validate_connect_ip_response(headers)
        assert caught.value.reason == "malformed_response"
        assert caught.value.code == H3ErrorCode.H3_MESSAGE_ERROR


def test_response_headers_cover_200_to_599_only() -> None:
    assert response_headers(300) == [(b":status", b"300")]
    assert response_headers(599) == [(b":status", b"599")]
    assert response_headers(405) == [(b":status", b"405"), (b"allow", b"CONNECT")]
    for status in (199, 600):
        with pytest.raises(ProtoError, match=f"bad response status {status}"):
            response_headers(status)


def test_host_names_up_to_253_characters_and_a_trailing_dot() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters
    assert len(name) == 253
    assert ConnectIpTarget(name).hostname == name
    assert ConnectIpTarget(name + ".").hostname == name + "."
    with pytest.raises(ProtoError, match="bad host name") as caught:
        ConnectIpTarget(name + "b")
    assert caught.value.reason == "bad_target"
    assert ConnectIpTarget("x.").hostname == "x."  # one label and the root


def test_numeric_top_level_label_only_is_refused() -> None:
    assert ConnectIpTarget("1.example").hostname == "1.example"
    with pytest.raises(ProtoError, match="numeric top-level label"):
        ConnectIpTarget("example.123")


@pytest.mark.parametrize(
    ("pseudo", "status", "reason"),
    [
        ({"method": "GET"}, 405, "bad_method"),
        ({"protocol": "-"}, 501, "bad_protocol"),
        ({"protocol": "connect-udp"}, 501, "bad_protocol"),
        ({"path": "/elsewhere"}, 404, "not_found"),
        ({"method": "-"}, 400, "malformed_request"),
    ],
    ids=["method", "plain-connect", "protocol", "path", "no-method"],
)
def test_refused_requests_carry_status_and_reason(
    pseudo: dict[str, str], status: int, reason: str
) -> None:
    with pytest.raises(RequestError) as caught:
        parse_connect_ip_request(request(**pseudo))
    assert (caught.value.status, caught.value.reason) == (status, reason)

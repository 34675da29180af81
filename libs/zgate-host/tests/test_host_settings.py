"""Layered settings helpers."""

from __future__ import annotations

import pytest

from zgate_host.settings import parse_hostport


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("relay.example:4443", ("relay.example", 4443)),
        ("relay.example", ("relay.example", 4433)),
        ("[2001:db8::1]:53", ("2001:db8::1", 53)),
        ("2001:db8::1", ("2001:db8::1", 4433)),
        (":9101", ("0.0.0.0", 9101)),
    ],
)
def test_host_and_port_are_split(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, 4433, default_host="0.0.0.0") == expected


@pytest.mark.parametrize("text", ["host:port", "host:70000", ":1", "[::1]:x"])
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_hostport(text, 4433)

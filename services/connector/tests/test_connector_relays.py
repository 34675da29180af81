"""A connector given a relay name with several addresses holds a session to each."""

from __future__ import annotations

from zgate_connector.app import expand_relays


def test_a_connector_holds_a_session_to_each_address_of_a_name() -> None:
    table = {"relays.example": ["192.0.2.1", "2001:db8::2"], "one.example": ["192.0.2.7"]}

    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("no such name")
        return table[host]

    got = expand_relays(
        ["relays.example:4433", "one.example:4433", "192.0.2.50:4433", "nowhere.example"],
        None,
        resolve,
    )
    assert got == [
        ("192.0.2.1:4433", "relays.example"),
        ("[2001:db8::2]:4433", "relays.example"),
        ("one.example:4433", None),
        ("192.0.2.50:4433", None),
        ("nowhere.example", None),
    ]
    # A TLS name given stays the one checked.
    assert expand_relays(["relays.example:4433"], "relay", resolve)[0] == (
        "192.0.2.1:4433",
        "relay",
    )

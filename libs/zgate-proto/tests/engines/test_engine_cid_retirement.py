"""A client that moves to a new connection ID retires the old one, and each engine tells the
relay (ConnectionIdRetired), which must then stop routing that ID to the connection.

Both engines, two in-memory peers and a fake clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from zgate_pki import PkiPaths
from zgate_proto.engines import get_engine
from zgate_proto.engines.base import (
    ClientConfig,
    ConnectionIdIssued,
    ConnectionIdRetired,
    DatagramReceived,
    QuicEngine,
    SendStatus,
)
from zgate_testkit.pki import make_pki, server_config
from zgate_testkit.wire import SERVER_ADDR, START, EnginePair


@pytest.fixture(params=["aioquic", "qh3"])
def engine(request: pytest.FixtureRequest) -> QuicEngine:
    return get_engine(request.param)


@pytest.fixture
def pki(tmp_path: Path) -> PkiPaths:
    return make_pki(tmp_path / "pki", groups=["eng"])


def test_a_retired_connection_id_is_reported(engine: QuicEngine, pki: PkiPaths) -> None:
    config = ClientConfig(
        server_name="localhost",
        ca_file=pki.ca_cert,
        cert_file=pki.leaf_cert("client", "alice"),
        key_file=pki.leaf_key("client", "alice"),
    )
    wire = EnginePair(engine, server_config(pki), engine.connect(config, SERVER_ADDR, START))
    wire.settle(wire.handshake_over)
    wire.settle()
    issued = {e.connection_id for e in wire.server_events if isinstance(e, ConnectionIdIssued)}
    assert len(issued) > 1  # spare IDs were announced to the client
    assert not any(isinstance(e, ConnectionIdRetired) for e in wire.server_events)

    quic: Any = wire.client._quic  # type: ignore[attr-defined]
    quic.change_connection_id()
    assert wire.client.send_datagram(b"after the change") is SendStatus.SENT
    wire.settle()

    retired = [e.connection_id for e in wire.server_events if isinstance(e, ConnectionIdRetired)]
    assert len(retired) == 1 and retired[0] in issued
    assert DatagramReceived(b"after the change") in wire.server_events

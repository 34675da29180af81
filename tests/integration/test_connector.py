"""The connector against a real relay in one process (loopback QUIC, in-memory devices), and
its settings and command line."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import time
from functools import partial
from pathlib import Path

import pytest

from zgate_agent.metrics import AgentMetrics
from zgate_connector.app import Connector, ConnectorGroup, site_advertisement
from zgate_connector.cli import main
from zgate_connector.settings import ConnectorSettings
from zgate_host.memdev import MemoryPacketDevice
from zgate_host.settings import SettingsError, load_settings
from zgate_lab.harness import RelayUnderTest, make_pki, running_relay, start_agent, udp4, until
from zgate_pki import issue_certificate, revoke_certificate
from zgate_proto.engines import ENGINES
from zgate_relay.sites import SiteRoutes

SITE = ipaddress.ip_network("192.168.50.0/24")
HOST = "192.168.50.10"


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """The connector's (and its test agents') QUIC engine."""
    name: str = request.param
    return name


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = make_pki(tmp_path / "pki", ["alice"])
    issue_certificate(directory, "connector", "site-a")
    return directory


def connector_settings(pki: Path, port: int, engine: str) -> ConnectorSettings:
    return ConnectorSettings(
        relay=f"127.0.0.1:{port}",
        quic_engine=engine,
        ca=pki / "ca.pem",
        cert=pki / "connectors" / "site-a.pem",
        key=pki / "connectors" / "site-a.key",
        server_name="localhost",
        site=[SITE],
        metrics=None,
        backoff_initial=0.05,
        backoff_max=0.5,
    )


async def test_agent_reaches_the_site_through_the_connector(engine: str, pki: Path) -> None:
    async with running_relay(pki, sites=SiteRoutes({"site-a": [SITE]})) as relay:
        device = MemoryPacketDevice("mem-site-a")
        connector = Connector(
            connector_settings(pki, relay.port, engine),
            device,
            AgentMetrics(),
            configure_host=False,
        )
        task = asyncio.create_task(connector.run())
        alice = await start_agent(relay, "alice", quic_engine=engine)
        try:
            await asyncio.wait_for(connector.connected.wait(), 10)
            routes = relay.metrics.connector_prefixes.labels("site-a")
            await until(lambda: routes._value.get() == 1, what="the site's routes installed")
            out = udp4(alice.address4, HOST, b"GET /wiki")
            alice.device.inject(out)
            got = await device.received(timeout=5)
            assert got[12:20] == out[12:20] and got.endswith(b"GET /wiki")
            device.inject(udp4(HOST, alice.address4, b"200 OK", sport=7, dport=40000))
            assert (await alice.device.received(timeout=5)).endswith(b"200 OK")
            assert connector.status()["state"] == "connected"
        finally:
            await alice.stop()
            connector.stop()
            await asyncio.wait_for(task, 10)
            device.close()
        await until(lambda: routes._value.get() == 0, what="the routes to be withdrawn")


def site_routed(relay: RelayUnderTest) -> bool:
    """The relay installed site-a's routes."""
    value: float = relay.metrics.connector_prefixes.labels("site-a")._value.get()
    return value == 1


def test_site_advertisement_is_ordered_for_the_rfc() -> None:
    ad = site_advertisement(
        [ipaddress.ip_network("fd00:50::/64"), ipaddress.ip_network("192.168.50.0/24")]
    )
    assert [r.version for r in ad.ranges] == [4, 6]


def test_a_site_is_required_and_checked() -> None:
    with pytest.raises(SettingsError, match="site"):
        load_settings(ConnectorSettings, None, {})
    with pytest.raises(SettingsError, match="site"):
        load_settings(ConnectorSettings, None, {"site": ["192.168.50.1/24"]})
    settings = load_settings(ConnectorSettings, None, {"site": ["192.168.50.0/24"]})
    assert settings.site == [SITE] and settings.nat and not settings.full_tunnel


def test_missing_certificate_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["up", "--site", "192.168.50.0/24", "--ca", str(tmp_path / "nope.pem")])
    assert code == 2
    assert f"--ca {tmp_path / 'nope.pem'} does not exist" in capsys.readouterr().err


def test_status_without_a_running_connector(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--metrics", "127.0.0.1:9"]) == 1
    assert "zgate-connector up" in capsys.readouterr().err


async def test_one_connector_serves_the_site_to_two_relays(engine: str, pki: Path) -> None:
    """A session per relay on one device: each relay's agent reaches the site, and each
    reply goes back through the relay its agent came from (both use the same pool, so the
    agents may even hold the same address)."""
    async with (
        running_relay(pki, sites=SiteRoutes({"site-a": [SITE]})) as first,
        running_relay(pki, sites=SiteRoutes({"site-a": [SITE]})) as second,
    ):
        device = MemoryPacketDevice("mem-site-a")
        settings = connector_settings(pki, first.port, engine).model_copy(
            update={"relays": [f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"]}
        )
        metrics = AgentMetrics(prefix="zgate_connector")
        group = ConnectorGroup(
            settings, settings.relay_addresses, device, metrics, configure_host=False
        )
        task = asyncio.create_task(group.run())
        alice = await start_agent(first, "alice", quic_engine=engine)
        bob = await start_agent(
            second, "alice", quic_engine=engine
        )  # the same client on the other relay
        try:
            for relay in (first, second):
                await until(partial(site_routed, relay), what="routes at each relay")
            for agent, word in ((alice, b"first"), (bob, b"second")):
                agent.device.inject(udp4(agent.address4, HOST, word))
                got = await device.received(timeout=5)
                assert got.endswith(word)
                device.inject(udp4(HOST, agent.address4, b"re:" + word, sport=7, dport=40000))
                assert (await agent.device.received(timeout=5)).endswith(b"re:" + word)
            status = group.status()
            assert status["state"] == "connected" and len(status["links"]) == 2
            # One gauge for the group: how many relays it has a live session with.
            assert metrics.registry.get_sample_value("zgate_connector_connected") == 2
            assert (
                metrics.registry.get_sample_value(
                    "zgate_connector_packets_total", {"direction": "from_relay"}
                )
                == 2
            )
        finally:
            await alice.stop()
            await bob.stop()
            group.stop()
            await asyncio.wait_for(task, 10)
            device.close()


def test_the_example_settings_file_loads() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "connector.yaml"
    settings = load_settings(ConnectorSettings, example, {})
    assert settings.site == [SITE]
    assert settings.relay_addresses == ["relay1.example.net:4433", "relay2.example.net:4433"]


async def test_a_refused_connector_says_why_once_and_waits_long(engine: str, pki: Path) -> None:
    """The agent's failure handling is the connector's: a revoked connector certificate is
    one plain line (naming `zgate pki issue connector`) and the long backoff."""
    revoke_certificate(pki, "site-a")
    async with running_relay(pki, sites=SiteRoutes({"site-a": [SITE]})) as relay:
        device = MemoryPacketDevice("mem-site-a")
        settings = connector_settings(pki, relay.port, engine).model_copy(
            update={"backoff_permanent": 40.0}
        )
        group = ConnectorGroup(
            settings, settings.relay_addresses, device, AgentMetrics(), configure_host=False
        )
        task = asyncio.create_task(group.run())
        try:
            await until(lambda: group.status()["last_error"] is not None, what="the error")
            error = group.status()["last_error"]
            assert "the relay refused our certificate --cert " in error
            assert "it has been revoked" in error
            assert "`zgate pki issue connector ID`" in error
            await asyncio.sleep(0.3)
            assert group.status()["attempts"] == 1
        finally:
            started = time.monotonic()
            group.stop()
            await asyncio.wait_for(task, 1)
            assert time.monotonic() - started < 0.2
            device.close()


async def test_a_connector_group_stops_at_once_while_connecting(
    engine: str, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 60.0
    silent = [
        await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        for _ in range(2)
    ]
    try:
        ports = [transport.get_extra_info("sockname")[1] for transport, _ in silent]
        await _stop_a_group_while_connecting(engine, pki, ports)
    finally:
        for transport, _ in silent:
            transport.close()
    # Nothing the group started is left pending once it is gone.
    gc.collect()
    await asyncio.sleep(0)
    noise = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert not noise, noise


async def _stop_a_group_while_connecting(engine: str, pki: Path, ports: list[int]) -> None:
    device = MemoryPacketDevice("mem-site-a")
    settings = connector_settings(pki, ports[0], engine).model_copy(
        update={"relays": [f"127.0.0.1:{p}" for p in ports], "connect_timeout": 30.0}
    )
    group = ConnectorGroup(
        settings, settings.relay_addresses, device, AgentMetrics(), configure_host=False
    )
    task = asyncio.create_task(group.run())
    try:
        await until(
            lambda: all(link.status()["state"] == "connecting" for link in group.links),
            what="both links connecting",
        )
        await asyncio.sleep(0.2)
        started = time.monotonic()
        group.stop()
        await asyncio.wait_for(task, 1)
        assert time.monotonic() - started < 0.2
        assert [link.status()["state"] for link in group.links] == ["stopped", "stopped"]
    finally:
        device.close()


def test_connector_files_default_to_its_own_state_dir(tmp_path: Path) -> None:
    from zgate_connector.settings import ConnectorSettings

    settings = ConnectorSettings(relays=["relay:4433"], site=["192.168.50.0/24"])
    assert settings.state_dir.name == "connector"
    assert settings.cert == settings.state_dir / "connector.pem"
    assert settings.ca == settings.state_dir / "ca.pem"
    moved = ConnectorSettings(relays=["relay:4433"], site=["192.168.50.0/24"], state_dir=tmp_path)
    assert moved.key == tmp_path / "connector.key"


def test_the_connectors_quic_engine_from_env_or_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    site = {"site": ["192.168.50.0/24"]}
    monkeypatch.setenv("ZGATE_CONNECTOR_QUIC_ENGINE", "qh3")
    assert load_settings(ConnectorSettings, None, site).quic_engine == "qh3"
    assert load_settings(
        ConnectorSettings, None, {**site, "quic_engine": "aioquic"}
    ).quic_engine == ("aioquic")
    with pytest.raises(SystemExit):
        main(["up", "--help"])
    assert "--quic-engine {aioquic,qh3}" in capsys.readouterr().out

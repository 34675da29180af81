"""Connector sessions in one process over loopback QUIC: advertised routes installed or
refused, agents' packets for a site carried to a connector and back, and failover between
two connectors of one site; once per QUIC engine of the relay. (A connector here is a
RawClient — an engine and the session core — with a connector certificate that advertises
its site itself; the connector service drives the same session.)"""

from __future__ import annotations

import ipaddress
from functools import partial
from pathlib import Path

import pytest

from zgate_lab.harness import (
    QUIC_ENGINES,
    RawClient,
    RelayUnderTest,
    make_pki,
    running_relay,
    start_agent,
    udp4,
    until,
)
from zgate_pki import issue_certificate
from zgate_proto.capsules import RouteAdvertisement
from zgate_relay.session import routes_for
from zgate_relay.sites import SiteRoutes

#: Every test runs once per QUIC engine of the relay.
pytestmark = pytest.mark.parametrize("engine", QUIC_ENGINES)

SITE = "192.168.50.0/24"
HOST = "192.168.50.10"


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = make_pki(tmp_path / "pki", ["alice"])
    for ident in ("site-a", "site-a-2", "rogue"):
        issue_certificate(directory, "connector", ident)
    # The harness loads client certificates from clients/: give connectors the same layout.
    for ident in ("site-a", "site-a-2", "rogue"):
        for ext in ("pem", "key"):
            (directory / "clients" / f"{ident}.{ext}").write_bytes(
                (directory / "connectors" / f"{ident}.{ext}").read_bytes()
            )
    return directory


def advertise(connector: RawClient, *prefixes: str) -> None:
    ranges = routes_for([ipaddress.ip_network(p) for p in prefixes])
    connector.send_capsules([RouteAdvertisement(ranges)])


async def start_connector(
    relay: RelayUnderTest, ident: str, keepalive: float | None = None
) -> RawClient:
    return await RawClient(relay, ident, keepalive=keepalive).start()


def routes_up(relay: RelayUnderTest, ident: str) -> bool:
    """Whether connector ``ident`` has a live session with routes installed."""
    return bool(relay.metrics.connector_sessions.labels(ident)._value.get() == 1)


def sites() -> SiteRoutes:
    allowed = [ipaddress.ip_network(SITE)]
    return SiteRoutes({"site-a": allowed, "site-a-2": allowed})


async def test_site_traffic_goes_through_the_connector_and_back(pki: Path, engine: str) -> None:
    async with running_relay(pki, engine=engine, sites=sites()) as relay:
        connector = await start_connector(relay, "site-a")
        alice = await start_agent(relay, "alice")
        try:
            # The connector is told the agents' pool, not "everything".
            assert {str(n) for r in connector.session.routes for n in r.networks()} == {
                "10.100.0.0/16",
                "fd7a:7a67::/64",
            }
            advertise(connector, SITE)
            metric = relay.metrics.connector_sessions.labels("site-a")
            await until(lambda: metric._value.get() == 1, what="the site's routes")
            out = udp4(alice.address4, HOST, b"to the wiki")
            alice.device.inject(out)
            got = await connector.received(timeout=5)
            assert got[16:20] == ipaddress.ip_address(HOST).packed and got.endswith(b"wiki")
            back = udp4(HOST, alice.address4, b"from the wiki", sport=7, dport=40000)
            connector.send_packet(back)
            assert (await alice.device.received(timeout=5)).endswith(b"from the wiki")
            assert relay.egress.drain() == []  # nothing went to the internet
        finally:
            await alice.stop()
            await connector.stop()
        await until(
            lambda: relay.metrics.connector_sessions.labels("site-a")._value.get() == 0,
            what="the connector's routes to go",
        )


async def test_prefixes_outside_the_allowance_are_refused(pki: Path, engine: str) -> None:
    async with running_relay(pki, engine=engine, sites=sites()) as relay:
        rogue = await start_connector(relay, "rogue")
        alice = await start_agent(relay, "alice")
        try:
            advertise(rogue, SITE, "10.0.0.0/8")
            refusals = relay.metrics.route_refusals.labels("rogue")
            await until(lambda: refusals._value.get() == 2, what="both prefixes refused")
            # The site stays unserved: alice's packet is dropped, not sent to the rogue
            # connector, nor to the internet.
            alice.device.inject(udp4(alice.address4, HOST, b"x"))
            await until(lambda: relay.metrics.drops["no_connector"] == 1, what="the drop")
            assert rogue.drain() == [] and relay.egress.drain() == []
        finally:
            await alice.stop()
            await rogue.stop()


async def test_flows_move_to_the_surviving_connector(pki: Path, engine: str) -> None:
    async with running_relay(pki, engine=engine, sites=sites()) as relay:
        one = await start_connector(relay, "site-a")
        two = await start_connector(relay, "site-a-2")
        alice = await start_agent(relay, "alice")
        try:
            advertise(one, SITE)
            advertise(two, SITE)
            for ident in ("site-a", "site-a-2"):
                await until(partial(routes_up, relay, ident), what=f"{ident}'s routes")
            ports = range(41000, 41040)
            for port in ports:
                alice.device.inject(udp4(alice.address4, HOST, b"p%d" % port, sport=port))
            first: dict[int, str] = {}

            def collect() -> bool:
                for name, client in (("one", one), ("two", two)):
                    for packet in client.drain():
                        first[int.from_bytes(packet[20:22], "big")] = name
                return len(first) == len(ports)

            await until(collect, what="every flow's first packet at a connector")
            assert set(first.values()) == {"one", "two"}  # spread over both
            await one.stop()
            await until(
                lambda: relay.metrics.connector_sessions.labels("site-a")._value.get() == 0,
                what="connector one to be gone",
            )
            for port in ports:
                alice.device.inject(udp4(alice.address4, HOST, b"again", sport=port))
            moved = 0
            while moved < len(ports):
                packet = await two.received(timeout=5)
                moved += 1
                assert packet.endswith(b"again")
        finally:
            await alice.stop()
            await two.stop()


async def test_a_silent_connector_is_failed_over_after_its_deadline(pki: Path, engine: str) -> None:
    async with running_relay(pki, engine=engine, sites=sites(), connector_deadline=0.5) as relay:
        # Connectors ping often enough for the deadline (the connector service: every 1 s).
        one = await start_connector(relay, "site-a", keepalive=0.1)
        two = await start_connector(relay, "site-a-2", keepalive=0.1)
        alice = await start_agent(relay, "alice")
        try:
            advertise(one, SITE)
            advertise(two, SITE)
            gauge_one = relay.metrics.connector_sessions.labels("site-a")
            gauge_two = relay.metrics.connector_sessions.labels("site-a-2")
            await until(lambda: gauge_one._value.get() == gauge_two._value.get() == 1)
            # Connector one stops sending anything (a crashed host, a cut cable).
            one.silent = True

            def failed_over() -> bool:
                relay.server.tick()  # the relay's once-a-second housekeeping
                return bool(gauge_one._value.get() == 0)

            await until(failed_over, what="connector one to be declared silent")
            assert gauge_two._value.get() == 1
            for port in range(42000, 42020):
                alice.device.inject(udp4(alice.address4, HOST, b"after", sport=port))
            for _ in range(20):
                assert (await two.received(timeout=5)).endswith(b"after")
            one.silent = False
        finally:
            await alice.stop()
            await two.stop()
            await one.stop()

"""The relay's DNS forwarder, end to end on loopback against an upstream server of the test's own.

The upstream answers from a small zone over UDP and TCP, and can truncate over UDP, stay
silent, hold its answers until told, or send a forged answer first.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zgate_relay.dns import (
    DnsError,
    DnsProxy,
    SuffixUpstreams,
    parse_query,
    parse_upstream,
    resolved_chain,
)
from zgate_relay.fqdn import FqdnBindings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LOCAL = ipaddress.ip_address("127.0.0.1")
WAIT = 5.0  # generous bound on any single await; tests finish far sooner
POISON = "192.0.2.66"  # the address a forged answer tries to plant

ZONE = {
    "www.corp.example.": [("A", 300, "203.0.113.10"), ("AAAA", 120, "2001:db8::10")],
    "alias.corp.example.": [("CNAME", 600, "edge.cdn.example.")],
    "edge.cdn.example.": [("CNAME", 900, "node7.cdn.example.")],
    "node7.cdn.example.": [("A", 60, "203.0.113.20"), ("A", 60, "203.0.113.21")],
    "big.corp.example.": [("A", 30, f"198.51.100.{i}") for i in range(1, 61)],
    "db.corp.internal.": [("A", 300, "198.51.100.200")],
}


# ---------------------------------------------------------------- the test's upstream


@dataclass
class Upstream:
    """A DNS server on loopback answering from ``ZONE``."""

    truncate_udp: set[str] = field(default_factory=set)  # names answered TC over UDP
    silent: bool = False
    forge_first: bool = False  # send a poisoned reply with a wrong id before the real one
    echo_first: bool = False  # send the query itself back (right id, no QR) before the answer
    hold: asyncio.Event | None = None
    zone: dict[str, list[tuple[str, int, str]]] = field(default_factory=lambda: dict(ZONE))
    port: int = 0
    udp_queries: int = 0
    tcp_queries: int = 0
    held: int = 0
    held_more: asyncio.Event = field(default_factory=asyncio.Event)  # set as `held` grows
    received: list[bytes] = field(default_factory=list)  # every query, as it arrived
    sent: list[bytes] = field(default_factory=list)
    udp: asyncio.DatagramTransport | None = None
    tcp: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def answer(self, wire: bytes, *, over_udp: bool) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().lower()
        if over_udp and name in self.truncate_udp:
            response.flags |= dns.flags.TC
            return response.to_wire()
        if name not in self.zone:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        owner = name
        for _ in range(8):  # follow CNAMEs like a recursive resolver would
            records = self.zone.get(owner, [])
            for rdtype, ttl, value in records:
                if rdtype == "CNAME" or rdtype == dns.rdatatype.to_text(question.rdtype):
                    response.answer.append(dns.rrset.from_text(owner, ttl, "IN", rdtype, value))
            cname = [value for rdtype, _, value in records if rdtype == "CNAME"]
            if not cname:
                break
            owner = cname[0]
        return response.to_wire(max_size=65535)

    async def respond(self, wire: bytes, *, over_udp: bool) -> bytes | None:
        if self.silent:
            return None
        if self.hold is not None:
            self.held += 1
            self.held_more.set()
            await self.hold.wait()
        reply = self.answer(wire, over_udp=over_udp)
        self.sent.append(reply)
        return reply

    def decoys(self, wire: bytes) -> list[bytes]:
        """What an attacker (or a confused server) sends before the real answer."""
        out = []
        if self.echo_first:
            out.append(wire)
        if self.forge_first:
            forged = dns.message.make_response(dns.message.from_wire(wire))
            forged.id ^= 0xFFFF  # every id but the right one would do
            forged.answer.append(
                dns.rrset.from_text(forged.question[0].name, 86400, "IN", "A", POISON)
            )
            out.append(forged.to_wire())
        return out

    async def start(self) -> None:
        if self.port:
            return  # already serving
        loop = asyncio.get_running_loop()
        upstream = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = cast(asyncio.DatagramTransport, transport)

            def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
                upstream.udp_queries += 1
                upstream.received.append(data)
                task = loop.create_task(self.reply(data, addr))
                upstream.tasks.add(task)
                task.add_done_callback(upstream.tasks.discard)

            async def reply(self, data: bytes, addr: tuple[str | int, ...]) -> None:
                for decoy in upstream.decoys(data):
                    self.transport.sendto(decoy, addr)
                reply = await upstream.respond(data, over_udp=True)
                if reply is not None:
                    self.transport.sendto(reply, addr)

        async def serve_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(size)
                    upstream.tcp_queries += 1
                    upstream.received.append(data)
                    for decoy in upstream.decoys(data):
                        writer.write(len(decoy).to_bytes(2, "big") + decoy)
                    reply = await upstream.respond(data, over_udp=False)
                    if reply is not None:
                        writer.write(len(reply).to_bytes(2, "big") + reply)
            writer.close()

        for _ in range(20):  # a free UDP port whose TCP twin is free too
            self.udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
            self.port = self.udp.get_extra_info("sockname")[1]
            try:
                self.tcp = await asyncio.start_server(serve_tcp, "127.0.0.1", self.port)
                return
            except OSError:
                self.udp.close()
        raise RuntimeError("no free port pair")

    async def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            self.tcp.close()
            await self.tcp.wait_closed()


# ------------------------------------------------------------------- agent side


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.on_reply: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.on_reply is not None:
            self.on_reply()
        self.replies.put_nowait(data)


@contextlib.asynccontextmanager
async def udp_client(port: int, host: str = "127.0.0.1") -> AsyncIterator[_Client]:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(_Client, remote_addr=(host, port))
    try:
        yield client
    finally:
        transport.close()


async def udp_ask(port: int, wire: bytes, host: str = "127.0.0.1") -> bytes:
    async with udp_client(port, host) as client:
        client.transport.sendto(wire)
        return await asyncio.wait_for(client.replies.get(), WAIT)


async def tcp_ask(port: int, *wires: bytes) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for wire in wires:
            writer.write(len(wire).to_bytes(2, "big") + wire)
        replies = []
        for _ in wires:
            size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), WAIT), "big")
            replies.append(await asyncio.wait_for(reader.readexactly(size), WAIT))
        return replies
    finally:
        writer.close()
        await writer.wait_closed()


def query(name: str, rdtype: str = "A", **kwargs: object) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ fixtures


Answer = tuple[IPAddress, str, list[IPAddress], int]


@dataclass
class Rig:
    upstream: Upstream
    proxy: DnsProxy
    port: int
    answers: list[Answer]


@contextlib.asynccontextmanager
async def rig(upstream: Upstream | None = None, **options: object) -> AsyncIterator[Rig]:
    upstream = upstream or Upstream()
    await upstream.start()
    answers: list[Answer] = []
    kwargs: dict[str, object] = {"upstreams": [upstream.address], "timeout": 1.0, **options}
    proxy = DnsProxy(
        on_answer=lambda *a: answers.append(a),
        **kwargs,  # type: ignore[arg-type]
    )
    try:
        port = await proxy.start(["127.0.0.1"], 0)
        yield Rig(upstream, proxy, port, answers)
    finally:
        await proxy.close()
        await upstream.close()


# --------------------------------------------------------------------------- tests


async def test_answer_passes_through_unchanged_and_is_recorded() -> None:
    async with rig() as r:
        q = query("WWW.corp.example", "A")
        reply = await udp_ask(r.port, q.to_wire())
        assert reply == q.id.to_bytes(2, "big") + r.upstream.sent[0][2:]
        # The query went upstream unchanged but for its id, and the answer came back for it.
        assert r.upstream.received[0][2:] == q.to_wire()[2:]
        assert r.upstream.sent[0][:2] == r.upstream.received[0][:2]
        assert dns.message.from_wire(reply).rcode() == dns.rcode.NOERROR
        assert r.answers == [
            (LOCAL, "www.corp.example", [ipaddress.ip_address("203.0.113.10")], 300)
        ]
        q6 = query("www.corp.example", "AAAA")
        await udp_ask(r.port, q6.to_wire())
        assert r.answers[1] == (
            LOCAL,
            "www.corp.example",
            [ipaddress.ip_address("2001:db8::10")],
            120,
        )
        stats = r.proxy.stats.as_dict()
        assert (stats["queries"], stats["answers"], stats["failures"]) == (2, 2, 0)


async def test_cname_chain_binds_every_name_before_the_answer_is_sent() -> None:
    bindings = FqdnBindings()
    seen_when_answered: list[frozenset[str]] = []
    upstream = Upstream()
    await upstream.start()
    proxy = DnsProxy(
        upstreams=[upstream.address],
        on_answer=lambda client, name, addresses, ttl: bindings.record(
            str(client), name, addresses, ttl, now=0.0
        ),
    )
    target = ipaddress.ip_address("203.0.113.21")
    try:
        port = await proxy.start(["127.0.0.1"], 0)
        async with udp_client(port) as client:
            client.on_reply = lambda: seen_when_answered.append(
                bindings.names_for("127.0.0.1", target, now=1.0)
            )
            client.transport.sendto(query("alias.corp.example").to_wire())
            reply = dns.message.from_wire(await asyncio.wait_for(client.replies.get(), WAIT))
    finally:
        await proxy.close()
        await upstream.close()
    assert [rrset.rdtype for rrset in reply.answer] == [
        dns.rdatatype.CNAME,
        dns.rdatatype.CNAME,
        dns.rdatatype.A,
    ]
    chain = {"alias.corp.example", "edge.cdn.example", "node7.cdn.example"}
    assert seen_when_answered == [chain]
    assert bindings.names_for("127.0.0.1", target, now=59.0) == chain
    assert bindings.names_for("127.0.0.1", target, now=60.0) == frozenset()  # min TTL: 60


async def test_nxdomain_passes_through_without_a_binding() -> None:
    async with rig() as r:
        reply = dns.message.from_wire(await udp_ask(r.port, query("nope.example").to_wire()))
        assert reply.rcode() == dns.rcode.NXDOMAIN
        assert r.answers == []
        assert r.proxy.stats.answers == 1


async def test_truncated_upstream_answer_is_retried_over_tcp() -> None:
    async with rig(Upstream(truncate_udp={"www.corp.example."})) as r:
        q = query("www.corp.example", use_edns=0, payload=1232)
        reply = await udp_ask(r.port, q.to_wire())
        parsed = dns.message.from_wire(reply)
        assert not parsed.flags & dns.flags.TC
        assert parsed.answer[0].to_text() == "www.corp.example. 300 IN A 203.0.113.10"
        assert (r.upstream.udp_queries, r.upstream.tcp_queries) == (1, 1)
        assert r.proxy.stats.tcp_fallbacks == 1
        assert len(r.answers) == 1


async def test_answer_too_big_for_the_agents_udp_is_truncated_then_served_over_tcp() -> None:
    async with rig(Upstream(truncate_udp={"big.corp.example."})) as r:
        q = query("big.corp.example")  # no EDNS: 512 bytes at most over UDP
        small = dns.message.from_wire(await udp_ask(r.port, q.to_wire()))
        assert small.flags & dns.flags.TC and small.id == q.id and not small.answer
        assert small.flags & dns.flags.QR and small.rcode() == dns.rcode.NOERROR
        assert len(r.answers[0][2]) == 60  # bound from the full answer all the same
        (full,) = await tcp_ask(r.port, q.to_wire())
        assert len(full) > 512
        assert len(dns.message.from_wire(full).answer[0]) == 60
        assert r.upstream.tcp_queries == 2  # the retry after UDP, then the agent's own TCP


async def test_edns_payload_size_lets_a_big_answer_through_udp() -> None:
    async with rig(Upstream(truncate_udp={"big.corp.example."})) as r:
        q = query("big.corp.example", use_edns=0, payload=4096)  # EDNS version 0
        reply = await udp_ask(r.port, q.to_wire())
        assert len(reply) > 512
        parsed = dns.message.from_wire(reply)
        assert not parsed.flags & dns.flags.TC and len(parsed.answer[0]) == 60


async def test_in_flight_bound_refuses_the_excess_over_tcp_too() -> None:
    hold = asyncio.Event()
    async with rig(Upstream(hold=hold), max_in_flight=1) as r:
        first, second = query("www.corp.example"), query("www.corp.example", "AAAA")
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        try:
            for q in (first, second):
                writer.write(len(q.to_wire()).to_bytes(2, "big") + q.to_wire())
            size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), WAIT), "big")
            refused = dns.message.from_wire(await reader.readexactly(size))
            assert refused.id == second.id and refused.rcode() == dns.rcode.REFUSED
            assert r.proxy.stats.overloaded == 1
            hold.set()
            size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), WAIT), "big")
            answered = dns.message.from_wire(await reader.readexactly(size))
            assert answered.id == first.id and answered.rcode() == dns.rcode.NOERROR
        finally:
            writer.close()


async def test_tcp_queries_sent_before_a_half_close_are_still_answered() -> None:
    hold = asyncio.Event()
    async with rig(Upstream(hold=hold)) as r:
        queries = [query("www.corp.example"), query("www.corp.example", "AAAA")]
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        try:
            for q in queries:
                writer.write(len(q.to_wire()).to_bytes(2, "big") + q.to_wire())
            writer.write_eof()  # the agent is done sending, not done listening
            await until_held(r.upstream, 2)
            hold.set()
            answered = set()
            for _ in queries:
                size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), WAIT), "big")
                answered.add(dns.message.from_wire(await reader.readexactly(size)).id)
            assert answered == {q.id for q in queries}
            assert await asyncio.wait_for(reader.read(), WAIT) == b""  # then closed
        finally:
            writer.close()


async def until_held(upstream: Upstream, count: int) -> None:
    async with asyncio.timeout(WAIT):
        while upstream.held < count:
            upstream.held_more.clear()
            await upstream.held_more.wait()


async def test_idle_tcp_connection_is_closed() -> None:
    async with rig(tcp_idle_timeout=0.2) as r:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed by the relay
        writer.close()


async def test_pipelined_tcp_queries_are_all_answered() -> None:
    async with rig() as r:
        q1, q2 = query("www.corp.example"), query("www.corp.example", "AAAA")
        replies = [
            dns.message.from_wire(w) for w in await tcp_ask(r.port, q1.to_wire(), q2.to_wire())
        ]
        assert sorted(m.id for m in replies) == sorted([q1.id, q2.id])
        assert r.upstream.udp_queries == 0  # an agent on TCP is forwarded over TCP
        assert len(r.answers) == 2


async def test_silent_upstream_gives_servfail() -> None:
    async with rig(Upstream(silent=True), timeout=0.2) as r:
        q = query("www.corp.example")
        reply = dns.message.from_wire(await udp_ask(r.port, q.to_wire()))
        assert reply.rcode() == dns.rcode.SERVFAIL and reply.id == q.id
        assert not reply.flags & dns.flags.TC  # nothing more to get over TCP
        assert r.proxy.stats.failures == 1 and r.answers == []


async def test_next_upstream_is_tried_when_one_fails() -> None:
    silent, good = Upstream(silent=True), Upstream()
    await silent.start()
    await good.start()
    try:
        async with rig(good, upstreams=[silent.address, good.address], timeout=0.2) as r:
            reply = dns.message.from_wire(
                await udp_ask(r.port, query("www.corp.example").to_wire())
            )
            assert reply.rcode() == dns.rcode.NOERROR
            assert silent.udp_queries == 1 and good.udp_queries == 1
    finally:
        await silent.close()


async def test_unreachable_upstream_fails_fast() -> None:
    gone = Upstream()
    await gone.start()
    await gone.close()  # its port now answers with ICMP port unreachable
    async with rig(upstreams=[gone.address], timeout=30.0) as r:
        reply = await asyncio.wait_for(udp_ask(r.port, query("www.corp.example").to_wire()), 5.0)
        assert dns.message.from_wire(reply).rcode() == dns.rcode.SERVFAIL


@pytest.mark.parametrize("over_tcp", [False, True], ids=["udp", "tcp"])
async def test_forged_reply_with_a_wrong_id_is_ignored(over_tcp: bool) -> None:
    async with rig(Upstream(forge_first=True)) as r:
        q = query("www.corp.example")
        if over_tcp:
            (reply,) = await tcp_ask(r.port, q.to_wire())
        else:
            reply = await udp_ask(r.port, q.to_wire())
        # The forged answer arrived first and named another address: it must be neither
        # forwarded nor bound, and the real answer must still get through.
        assert reply == q.id.to_bytes(2, "big") + r.upstream.sent[0][2:]
        assert POISON not in dns.message.from_wire(reply).to_text()
        assert [str(a) for _, _, addresses, _ in r.answers for a in addresses] == ["203.0.113.10"]
        assert r.proxy.stats.failures == 0


@pytest.mark.parametrize("over_tcp", [False, True], ids=["udp", "tcp"])
async def test_query_echoed_back_is_not_taken_for_the_answer(over_tcp: bool) -> None:
    async with rig(Upstream(echo_first=True)) as r:
        q = query("www.corp.example")
        if over_tcp:
            (reply,) = await tcp_ask(r.port, q.to_wire())
        else:
            reply = await udp_ask(r.port, q.to_wire())
        parsed = dns.message.from_wire(reply)
        assert parsed.flags & dns.flags.QR and parsed.rcode() == dns.rcode.NOERROR
        assert reply == q.id.to_bytes(2, "big") + r.upstream.sent[0][2:]


@pytest.mark.parametrize("over_tcp", [False, True], ids=["udp", "tcp"])
async def test_upstream_query_ids_are_random_and_the_client_gets_its_own_back(
    over_tcp: bool,
) -> None:
    # Agents' ids are predictable here on purpose (the same id, then a counter); what the
    # upstream sees must not be: neither the agent's id, nor a sequence, nor a narrow range.
    count = 64
    client_ids = [0x1234] * (count // 2) + list(range(1, count // 2 + 1))
    async with rig() as r:
        for client_id in client_ids:
            q = query("www.corp.example", id=client_id)
            if over_tcp:
                (reply,) = await tcp_ask(r.port, q.to_wire())
            else:
                reply = await udp_ask(r.port, q.to_wire())
            assert dns.message.from_wire(reply).id == client_id
            assert reply[2:] == r.upstream.sent[-1][2:]
        upstream_ids = [int.from_bytes(wire[:2], "big") for wire in r.upstream.received]
    assert len(upstream_ids) == count
    # A random 16-bit id equals the agent's 1 time in 65 536; a couple of coincidences, or
    # of repeats among 64 draws (birthday: ~3 % for one), are chance, more are not.
    assert sum(u == c for u, c in zip(upstream_ids, client_ids, strict=True)) <= 1
    assert len(set(upstream_ids)) >= count - 3
    steps = [(b - a) % 65536 for a, b in itertools.pairwise(upstream_ids)]
    assert sum(step in (0, 1, 65535) for step in steps) <= 2  # not a counter
    assert len({u >> 8 for u in upstream_ids}) >= 16  # all 16 bits in use, not a small range


async def test_garbage_is_dropped_and_counted() -> None:
    async with rig() as r:
        response = dns.message.make_response(query("www.corp.example")).to_wire()
        async with udp_client(r.port) as client:
            for junk in (b"\x00\x01", b"\xff" * 40, response, query("a.example").to_wire()[:-3]):
                client.transport.sendto(junk)
            good = query("www.corp.example")
            client.transport.sendto(good.to_wire())
            reply = await asyncio.wait_for(client.replies.get(), WAIT)
            assert dns.message.from_wire(reply).id == good.id  # the first and only reply
            assert client.replies.empty()
        assert r.proxy.stats.malformed == 4
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        writer.write(b"\x00\x05hello")
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed, unanswered
        writer.close()
        assert r.proxy.stats.malformed == 5
        assert r.upstream.udp_queries == 1


async def test_in_flight_bound_refuses_the_excess() -> None:
    hold = asyncio.Event()
    async with rig(Upstream(hold=hold), max_in_flight=2) as r, udp_client(r.port) as client:
        queries = [query("www.corp.example") for _ in range(3)]
        for q in queries:
            client.transport.sendto(q.to_wire())
        refused = dns.message.from_wire(await asyncio.wait_for(client.replies.get(), WAIT))
        assert refused.rcode() == dns.rcode.REFUSED and refused.id == queries[2].id
        assert r.proxy.stats.overloaded == 1 and r.proxy.in_flight == 2
        hold.set()
        answered = {
            dns.message.from_wire(await asyncio.wait_for(client.replies.get(), WAIT)).id
            for _ in range(2)
        }
        assert answered == {queries[0].id, queries[1].id}
        assert r.proxy.in_flight == 0


async def test_tcp_connection_bound() -> None:
    async with rig(max_tcp_connections=1) as r:
        _, first = await asyncio.open_connection("127.0.0.1", r.port)
        await asyncio.sleep(0)
        reader, second = await asyncio.open_connection("127.0.0.1", r.port)
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        assert r.proxy.stats.overloaded == 1
        first.close()
        second.close()


async def test_zone_transfers_and_other_opcodes_are_refused_locally() -> None:
    async with rig() as r:
        axfr = dns.message.from_wire(await udp_ask(r.port, query("corp.example", "AXFR").to_wire()))
        assert axfr.rcode() == dns.rcode.REFUSED
        notify = query("corp.example", "SOA")
        notify.set_opcode(dns.opcode.NOTIFY)
        reply = dns.message.from_wire(await udp_ask(r.port, notify.to_wire()))
        assert reply.rcode() == dns.rcode.NOTIMP
        assert r.upstream.udp_queries == 0 and r.proxy.stats.refused == 2


async def test_ipv6_listener_reports_the_ipv6_client() -> None:
    upstream = Upstream()
    await upstream.start()
    answers: list[Answer] = []
    proxy = DnsProxy(upstreams=[upstream.address], on_answer=lambda *a: answers.append(a))
    try:
        port = await proxy.start(["127.0.0.1", "::1"], 0)
        await udp_ask(port, query("www.corp.example").to_wire(), host="::1")
        (tcp_reply,) = await tcp_ask(port, query("www.corp.example").to_wire())
    finally:
        await proxy.close()
        await upstream.close()
    assert answers[0][0] == ipaddress.ip_address("::1")
    assert answers[1][0] == LOCAL
    assert dns.message.from_wire(tcp_reply).rcode() == dns.rcode.NOERROR


async def test_per_domain_upstream_is_chosen_by_longest_suffix() -> None:
    corp = Upstream(zone={"db.corp.internal.": [("A", 300, "198.51.100.200")]})
    default = Upstream(zone={})
    await corp.start()
    await default.start()
    try:
        chooser = SuffixUpstreams([default.address], {"corp.internal": [corp.address]})
        async with rig(default, upstreams=(), choose_upstream=chooser.choose_upstream) as r:
            a = dns.message.from_wire(await udp_ask(r.port, query("db.corp.internal").to_wire()))
            b = dns.message.from_wire(await udp_ask(r.port, query("www.corp.example").to_wire()))
            assert a.rcode() == dns.rcode.NOERROR and b.rcode() == dns.rcode.NXDOMAIN
            assert (corp.udp_queries, default.udp_queries) == (1, 1)
    finally:
        await corp.close()


def test_suffix_choice() -> None:
    chooser = SuffixUpstreams(
        ["192.0.2.53"], {"corp.internal": ["10.1.0.53"], "eu.corp.internal.": ["10.2.0.53"]}
    )
    assert chooser.choose_upstream("corp.internal") == ["10.1.0.53"]
    assert chooser.choose_upstream("db.corp.internal") == ["10.1.0.53"]
    assert chooser.choose_upstream("db.eu.corp.internal") == ["10.2.0.53"]
    assert chooser.choose_upstream("xcorp.internal") == ["192.0.2.53"]
    assert chooser.choose_upstream("internal") == ["192.0.2.53"]
    with pytest.raises(DnsError, match="not IP"):
        SuffixUpstreams(["dns.example"])


def test_parse_upstream() -> None:
    assert parse_upstream("192.0.2.53") == ("192.0.2.53", 53)
    assert parse_upstream("192.0.2.53:5353") == ("192.0.2.53", 5353)
    assert parse_upstream("2001:db8::53") == ("2001:db8::53", 53)
    assert parse_upstream("[2001:db8::53]:5353") == ("2001:db8::53", 5353)
    for bad in ("", "host:53", "192.0.2.1:0", "192.0.2.1:70000", "[2001:db8::1", "[::1]x"):
        with pytest.raises(DnsError):
            parse_upstream(bad)


async def test_configuration_errors() -> None:
    with pytest.raises(DnsError, match="at least one upstream"):
        DnsProxy()
    proxy = DnsProxy(upstreams=["127.0.0.1"])
    with pytest.raises(DnsError, match="cannot listen"):
        await proxy.start(["192.0.2.1"], 0)  # not an address of this host


def test_resolved_chain_edge_cases() -> None:
    qname = dns.name.from_text("a.example")
    q = query("a.example")

    def answer(*records: str) -> dns.message.Message:
        response = dns.message.make_response(q)
        for text in records:
            name, ttl, rdtype, value = text.split()
            response.answer.append(dns.rrset.from_text(name, int(ttl), "IN", rdtype, value))
        return response

    loop = answer("a.example. 60 CNAME b.example.", "b.example. 60 CNAME a.example.")
    assert resolved_chain(qname, loop) is None
    assert resolved_chain(qname, answer("a.example. 60 CNAME b.example.")) is None
    unrelated = answer("c.example. 60 A 203.0.113.1")
    assert resolved_chain(qname, unrelated) is None
    chain = resolved_chain(
        qname, answer("a.example. 600 CNAME B.Example.", "b.example. 30 A 203.0.113.1")
    )
    assert chain is not None
    assert chain.names == ("a.example", "b.example") and chain.ttl == 30
    assert chain.addresses == (ipaddress.ip_address("203.0.113.1"),)


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_parse_query_never_raises(wire: bytes) -> None:
    parsed = parse_query(wire)
    assert parsed is None or len(parsed.question) == 1


@given(st.binary(min_size=1, max_size=8), st.integers(0, 40))
def test_parse_query_survives_corrupted_queries(junk: bytes, at: int) -> None:
    wire = bytearray(query("www.corp.example", use_edns=0).to_wire())
    wire[at : at + len(junk)] = junk
    parsed = parse_query(bytes(wire))
    assert parsed is None or not parsed.flags & dns.flags.QR


@given(st.text(max_size=50))
def test_parse_upstream_returns_a_pair_or_raises_ours(text: str) -> None:
    try:
        host, port = parse_upstream(text)
    except DnsError:
        return
    assert ipaddress.ip_address(host) and 0 < port < 65536


async def test_close_ends_open_tcp_connections() -> None:
    async with rig() as r:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        (reply,) = await tcp_ask(r.port, query("www.corp.example").to_wire())
        assert dns.message.from_wire(reply).rcode() == dns.rcode.NOERROR
        await asyncio.wait_for(r.proxy.close(), WAIT)
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # not left to idle out
        writer.close()

"""The relay's DNS service for agents: a forwarder on the tunnel gateway addresses, UDP and TCP.

Every answer passes back to the agent unchanged (apart from the query id, which the forwarder
picks afresh upstream), and before it does, the names and addresses in it are handed to
``on_answer`` so that the agent's first packet to such an address already finds its FQDN
binding. Malformed queries are dropped and counted, never answered; queries beyond the
in-flight bound are refused and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import math
import secrets
import socket
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import cast

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA

from zgate_relay.fqdn import normalize_name

__all__ = [
    "AnswerCallback",
    "DnsError",
    "DnsProxy",
    "DnsStats",
    "ResolvedChain",
    "SuffixUpstreams",
    "parse_query",
    "parse_upstream",
    "resolved_chain",
]

log = logging.getLogger("zgate.relay.dns")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AnswerCallback = Callable[[IPAddress, str, list[IPAddress], int], None]
"""``on_answer(client_address, name, addresses, ttl)``."""

HEADER_SIZE = 12  # RFC 1035 §4.1.1
CLASSIC_UDP_SIZE = 512  # RFC 1035 §2.3.4: the UDP limit without EDNS
MAX_CHAIN = 16  # CNAME links followed before an answer is deemed a loop
_IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # Linux; not exported by Python 3.11
_NO_FORWARD = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})  # multi-message answers


class DnsError(Exception):
    """Bad DNS service configuration (an upstream that is not ``IP[:port]``, a bind error)."""


@dataclass(slots=True)
class DnsStats:
    """Counters the relay exports as metrics; every field only grows."""

    queries: int = 0  # well-formed queries accepted
    answers: int = 0  # upstream answers passed back
    failures: int = 0  # SERVFAIL sent: every upstream failed or timed out
    malformed: int = 0  # dropped unanswered: not a parseable DNS query
    overloaded: int = 0  # refused: the in-flight or TCP connection bound was reached
    refused: int = 0  # refused by rule: zone transfers, opcodes other than QUERY
    tcp_fallbacks: int = 0  # truncated UDP answers retried over TCP

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ------------------------------------------------------------------------ upstreams


@functools.lru_cache(maxsize=256)
def parse_upstream(text: str) -> tuple[str, int]:
    """``"IP"``, ``"IP:port"``, ``"[IPv6]:port"`` or a bare IPv6 -> (host, port)."""
    host, port = text.strip(), 53
    try:
        if host.startswith("["):
            host, sep, rest = host[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError("expected [IPv6]:port")
            if rest:
                port = int(rest[1:])
        elif host.count(":") == 1:
            host, _, port_text = host.partition(":")
            port = int(port_text)
        address = ipaddress.ip_address(host)
    except ValueError:
        raise DnsError(f"DNS upstream {text!r} is not IP[:port]") from None
    if not 0 < port < 65536:
        raise DnsError(f"DNS upstream {text!r}: port out of range")
    return str(address), port


class SuffixUpstreams:
    """Chooses upstream resolvers by the longest matching domain suffix, else the default.

    ``per_domain={"corp.internal": ["10.1.0.53"]}`` sends ``corp.internal`` and every name
    under it to 10.1.0.53.
    """

    def __init__(
        self, default: Sequence[str], per_domain: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        self.default = list(default)
        self.per_domain = {normalize_name(k): list(v) for k, v in (per_domain or {}).items()}
        for upstream in [*self.default, *(u for v in self.per_domain.values() for u in v)]:
            parse_upstream(upstream)  # fail at start-up, not at the first query

    def choose_upstream(self, qname: str) -> list[str]:
        """The upstreams for ``qname`` (normalized: lowercase, no trailing dot), in order."""
        labels = qname.split(".")
        for i in range(len(labels)):
            chosen = self.per_domain.get(".".join(labels[i:]))
            if chosen is not None:
                return chosen
        return self.default


# ------------------------------------------------------------------- message helpers


def parse_query(wire: bytes) -> dns.message.Message | None:
    """``wire`` as a DNS query with exactly one question, or None if it is anything else."""
    if len(wire) < HEADER_SIZE or wire[2] & 0x80:  # too short, or QR set: not a query
        return None
    try:
        query = dns.message.from_wire(wire)
    except Exception:  # dnspython raises a wide variety on hostile input; all mean "malformed"
        return None
    if len(query.question) != 1:
        return None
    return query


@dataclass(frozen=True, slots=True)
class ResolvedChain:
    """What an answer binds: the queried name and its canonical names, the final addresses,
    and the smallest TTL along the chain."""

    names: tuple[str, ...]
    addresses: tuple[IPAddress, ...]
    ttl: int


def resolved_chain(qname: dns.name.Name, response: dns.message.Message) -> ResolvedChain | None:
    """Follow ``qname`` through the answer's CNAMEs to its A/AAAA records; None if none."""
    if response.rcode() != dns.rcode.NOERROR:
        return None
    cnames: dict[dns.name.Name, tuple[dns.name.Name, int]] = {}
    found: dict[dns.name.Name, tuple[list[IPAddress], int]] = {}
    for rrset in response.answer:
        if rrset.rdclass != dns.rdataclass.IN or not rrset:
            continue
        if rrset.rdtype == dns.rdatatype.CNAME:
            cnames[rrset.name] = (cast(CNAME, rrset[0]).target, rrset.ttl)
        elif rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            known, known_ttl = found.setdefault(rrset.name, ([], rrset.ttl))
            known.extend(ipaddress.ip_address(cast(A | AAAA, rd).address) for rd in rrset)
            found[rrset.name] = (known, min(known_ttl, rrset.ttl))
    chain, name = [qname], qname
    chain_ttl: float = math.inf
    while name in cnames:
        name, link_ttl = cnames[name]
        if name in chain or len(chain) > MAX_CHAIN:
            return None
        chain.append(name)
        chain_ttl = min(chain_ttl, link_ttl)
    if name not in found:
        return None
    addresses, address_ttl = found[name]
    return ResolvedChain(
        names=tuple(normalize_name(n.to_text(omit_final_dot=True)) for n in chain),
        addresses=tuple(addresses),
        ttl=int(min(chain_ttl, address_ttl)),
    )


def _reply(query: dns.message.Message, rcode: dns.rcode.Rcode, *, truncated: bool = False) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    if truncated:
        response.flags |= dns.flags.TC
    return response.to_wire()


def _udp_limit(query: dns.message.Message) -> int:
    return max(CLASSIC_UDP_SIZE, query.payload) if query.edns >= 0 else CLASSIC_UDP_SIZE


class _UpstreamFailed(Exception):
    pass


# --------------------------------------------------------------------- the forwarder


class _ServerUdp(asyncio.DatagramProtocol):
    def __init__(self, proxy: DnsProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        assert self.transport is not None
        self.proxy._udp_query(data, addr, self.transport)


class _UpstreamUdp(asyncio.DatagramProtocol):
    """One upstream exchange on its own connected socket: a fresh source port per query."""

    def __init__(self, query_id: int) -> None:
        self.prefix = query_id.to_bytes(2, "big")
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        # Anything that is not a response to our id is ignored: a spoofed or late datagram
        # must not end the wait for the real answer.
        ours = len(data) >= HEADER_SIZE and data[:2] == self.prefix and data[2] & 0x80
        if ours and not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():  # ICMP port unreachable: fail now, not at the timeout
            self.answer.set_exception(exc)


class DnsProxy:
    """Forwards agents' DNS queries to upstream resolvers over UDP and TCP.

    ``choose_upstream(qname)`` picks the resolvers for a name (default: ``upstreams`` for
    every name); each is tried in turn with ``timeout`` seconds per exchange, over UDP and
    again over TCP when the UDP answer is truncated. When all fail the agent gets SERVFAIL.
    """

    def __init__(
        self,
        *,
        upstreams: Sequence[str] = (),
        choose_upstream: Callable[[str], Sequence[str]] | None = None,
        on_answer: AnswerCallback | None = None,
        timeout: float = 2.0,
        max_in_flight: int = 256,
        max_tcp_connections: int = 128,
        tcp_idle_timeout: float = 10.0,
        freebind: bool = False,
    ) -> None:
        if choose_upstream is None:
            if not upstreams:
                raise DnsError("the DNS service needs at least one upstream resolver")
            choose_upstream = SuffixUpstreams(upstreams).choose_upstream
        self.choose_upstream = choose_upstream
        self.on_answer = on_answer
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.max_tcp_connections = max_tcp_connections
        self.tcp_idle_timeout = tcp_idle_timeout
        self.freebind = freebind
        self.stats = DnsStats()
        self.in_flight = 0
        self._connections: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []

    # ----------------------------------------------------------------- lifecycle

    async def start(self, addresses: Sequence[str], port: int = 53) -> int:
        """Serve UDP and TCP on each address; returns the port (0 picks one free for all)."""
        if not addresses:
            raise DnsError("the DNS service needs at least one address to listen on")
        try:
            for attempt in range(20):
                try:
                    bound = await self._listen(addresses[0], port)
                    break
                except OSError as exc:
                    # Port 0 picks a free UDP port; its TCP twin may be taken: pick again.
                    if port != 0 or exc.errno != errno.EADDRINUSE or attempt == 19:
                        raise
            for address in addresses[1:]:
                await self._listen(address, bound)
        except OSError as exc:
            await self.close()
            raise DnsError(
                f"DNS service cannot listen on {list(addresses)}:{port}: {exc}"
            ) from None
        log.info("dns service listening", extra={"addresses": list(addresses), "port": bound})
        return bound

    async def _listen(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        udp = self._socket(host, port, socket.SOCK_DGRAM)
        port = udp.getsockname()[1]
        try:
            tcp = self._socket(host, port, socket.SOCK_STREAM)
        except OSError:
            udp.close()
            raise
        transport, _ = await loop.create_datagram_endpoint(lambda: _ServerUdp(self), sock=udp)
        self._udp.append(transport)
        self._tcp.append(await asyncio.start_server(self._serve_tcp, sock=tcp))
        return int(port)

    def _socket(self, host: str, port: int, kind: socket.SocketKind) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, kind)
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if self.freebind:  # the tunnel address may not be up yet when the service starts
                sock.setsockopt(socket.SOL_IP, _IP_FREEBIND, 1)
            sock.bind((host, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def close(self) -> None:
        """Stop listening and cancel the queries in flight."""
        for transport in self._udp:
            transport.close()
        for server in self._tcp:
            server.close()
        for writer in list(self._connections):  # wait_closed() would wait for them (3.12+)
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._tcp:
            await server.wait_closed()
        self._udp.clear()
        self._tcp.clear()

    # --------------------------------------------------------------------- UDP

    def _udp_query(
        self, wire: bytes, addr: tuple[str | int, ...], transport: asyncio.DatagramTransport
    ) -> None:
        query = self._accept(wire)
        if query is None:
            return
        if self.in_flight >= self.max_in_flight:
            self.stats.overloaded += 1
            transport.sendto(_reply(query, dns.rcode.REFUSED), addr)
            return
        client = ipaddress.ip_address(str(addr[0]).partition("%")[0])
        self._spawn(self._answer_udp(wire, query, client, addr, transport))

    async def _answer_udp(
        self,
        wire: bytes,
        query: dns.message.Message,
        client: IPAddress,
        addr: tuple[str | int, ...],
        transport: asyncio.DatagramTransport,
    ) -> None:
        answer = await self.resolve(wire, query, client, via_tcp=False)
        if len(answer) > _udp_limit(query):  # from a TCP retry: let the agent ask over TCP
            answer = _reply(query, dns.message.from_wire(answer).rcode(), truncated=True)
        if not transport.is_closing():
            transport.sendto(answer, addr)

    # --------------------------------------------------------------------- TCP

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_tcp_connections:
            self.stats.overloaded += 1
            writer.close()
            return
        self._connections.add(writer)
        pending: set[asyncio.Task[None]] = set()
        try:
            peer = writer.get_extra_info("peername")
            if not peer:
                return  # reset before we got to it
            client = ipaddress.ip_address(str(peer[0]).partition("%")[0])
            while (wire := await self._read_tcp_message(reader)) is not None:
                query = self._accept(wire)
                if query is None:
                    break  # framing can no longer be trusted
                if self.in_flight >= self.max_in_flight:
                    self.stats.overloaded += 1
                    self._write_tcp(writer, _reply(query, dns.rcode.REFUSED))
                    continue
                # Queries on one connection are answered as they complete (RFC 7766 §6.2.1.1).
                task = self._spawn(self._answer_tcp(wire, query, client, writer))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:  # the agent may half-close after its last query: still answer it
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _read_tcp_message(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            async with asyncio.timeout(self.tcp_idle_timeout):
                size = int.from_bytes(await reader.readexactly(2), "big")
                return await reader.readexactly(size)
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            return None

    async def _answer_tcp(
        self,
        wire: bytes,
        query: dns.message.Message,
        client: IPAddress,
        writer: asyncio.StreamWriter,
    ) -> None:
        answer = await self.resolve(wire, query, client, via_tcp=True)
        self._write_tcp(writer, answer)

    @staticmethod
    def _write_tcp(writer: asyncio.StreamWriter, message: bytes) -> None:
        if not writer.is_closing():
            writer.write(len(message).to_bytes(2, "big") + message)

    # -------------------------------------------------------------- forwarding

    def _accept(self, wire: bytes) -> dns.message.Message | None:
        query = parse_query(wire)
        if query is None:
            self.stats.malformed += 1
        return query

    def _spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        # Counted in flight from here, not from when the task first runs: a burst of
        # datagrams read in one loop iteration must meet the bound too.
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.in_flight -= 1
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("dns query handling failed", exc_info=exc)

    async def resolve(
        self, wire: bytes, query: dns.message.Message, client: IPAddress, *, via_tcp: bool
    ) -> bytes:
        """The answer for ``client``'s query (``wire``, parsed as ``query``), as wire bytes.

        Upstream's answer unchanged but for the id, SERVFAIL if no upstream answered, or
        REFUSED/NOTIMP for what a forwarder does not pass on. The bindings are recorded
        (``on_answer``) before this returns.
        """
        self.stats.queries += 1
        question = query.question[0]
        if query.opcode() != dns.opcode.QUERY:
            self.stats.refused += 1
            return _reply(query, dns.rcode.NOTIMP)
        if question.rdtype in _NO_FORWARD:
            self.stats.refused += 1
            return _reply(query, dns.rcode.REFUSED)
        qname = normalize_name(question.name.to_text(omit_final_dot=True))
        try:
            raw, response = await self._forward(wire, query, qname, via_tcp=via_tcp)
        except _UpstreamFailed:
            self.stats.failures += 1
            return _reply(query, dns.rcode.SERVFAIL)
        self._record(client, question.name, response)
        self.stats.answers += 1
        return query.id.to_bytes(2, "big") + raw[2:]

    async def _forward(
        self, wire: bytes, query: dns.message.Message, qname: str, *, via_tcp: bool
    ) -> tuple[bytes, dns.message.Message]:
        # A fresh random id (and, over UDP, a fresh source port) per upstream exchange: the
        # agent's id may be predictable, ours must not be (cache-poisoning defence).
        client_id = query.id
        try:
            return await self._try_upstreams(wire, query, qname, via_tcp=via_tcp)
        finally:
            query.id = client_id

    async def _try_upstreams(
        self, wire: bytes, query: dns.message.Message, qname: str, *, via_tcp: bool
    ) -> tuple[bytes, dns.message.Message]:
        for upstream in self.choose_upstream(qname):
            host, port = parse_upstream(upstream)
            query.id = secrets.randbits(16)
            out = query.id.to_bytes(2, "big") + wire[2:]
            try:
                async with asyncio.timeout(self.timeout):
                    raw = None if via_tcp else await self._exchange_udp(out, host, port)
                    if raw is None or raw[2] & 0x02:  # TC: the full answer is only over TCP
                        if raw is not None:
                            self.stats.tcp_fallbacks += 1
                        raw = await self._exchange_tcp(out, host, port)
                response = dns.message.from_wire(raw)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                log.debug("dns upstream failed", extra={"upstream": upstream, "error": repr(exc)})
                continue
            except Exception:  # an answer dnspython cannot parse: try the next upstream
                log.debug("dns upstream answer unparseable", extra={"upstream": upstream})
                continue
            if query.is_response(response):
                return raw, response
        raise _UpstreamFailed

    @staticmethod
    async def _exchange_udp(out: bytes, host: str, port: int) -> bytes:
        loop = asyncio.get_running_loop()
        query_id = int.from_bytes(out[:2], "big")
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _UpstreamUdp(query_id), remote_addr=(host, port)
        )
        try:
            transport.sendto(out)
            return await protocol.answer
        finally:
            transport.close()

    @staticmethod
    async def _exchange_tcp(out: bytes, host: str, port: int) -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(len(out).to_bytes(2, "big") + out)
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                raw = await reader.readexactly(size)
                # As over UDP: only a response (QR set) to our id ends the wait.
                if len(raw) >= HEADER_SIZE and raw[:2] == out[:2] and raw[2] & 0x80:
                    return raw
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _record(
        self, client: IPAddress, qname: dns.name.Name, response: dns.message.Message
    ) -> None:
        if self.on_answer is None:
            return
        chain = resolved_chain(qname, response)
        if chain is None:
            return
        addresses = list(chain.addresses)
        for name in chain.names:
            try:
                self.on_answer(client, name, addresses, chain.ttl)
            except Exception:  # a binding bug must not cost the agent its answer
                log.exception("recording a DNS answer failed", extra={"name": name})
